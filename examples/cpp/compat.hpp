// When a vit-deploy TensorRT plan may run: the rules of vit_deploy/data/trt_compatibility.json in C++.
//
// The Python runtime (vit_deploy/trt/plan.py) reads the same file; tests/test_cpp_example.py
// runs every case of its table through these functions, so the two languages cannot drift.
//   - exact: every recorded version component (major.minor.patch.build) equals the runtime's, as numbers;
//   - version-compatible plans: same or later runtime, same major or one of kCrossMajorPairs;
//   - hardware-compatible plans: any GPU of compute capability major >= kHardwareCompatibleMinMajor.
#pragma once

#include <cctype>
#include <string>
#include <utility>
#include <vector>

namespace vit_deploy {

// The "cross_major_pairs" and "hardware_compatible_min_major" of trt_compatibility.json.
constexpr std::pair<int, int> kCrossMajorPairs[] = {{8, 10}, {10, 11}};
constexpr int kHardwareCompatibleMinMajor = 8;

// "11.4.0.106" -> {11, 4, 0, 106}: numbers, so "11.1.10" is later than "11.1.1" and never a prefix of it.
inline std::vector<long> version_numbers(const std::string& text, std::size_t limit = 4) {
  std::vector<long> out;
  std::string digits;
  for (char c : text + ".") {
    if (std::isdigit(static_cast<unsigned char>(c))) {
      digits += c;
    } else if (!digits.empty()) {
      out.push_back(std::stol(digits));
      digits.clear();
      if (out.size() == limit) break;
    }
  }
  return out;
}

inline bool version_allowed(const std::string& built, const std::string& running, bool version_compatible) {
  const auto b = version_numbers(built), r = version_numbers(running);
  if (!version_compatible) return b == r;  // the standard runtime needs the exact version that built the plan
  if (b.empty() || r.empty() || r < b) return false;  // forward only: never an older runtime
  if (b[0] == r[0]) return true;
  for (const auto& pair : kCrossMajorPairs)
    if (pair.first == b[0] && pair.second == r[0]) return true;
  return false;
}

inline bool capability_allowed(const std::string& built, const std::string& running, bool hardware_compatible) {
  const auto b = version_numbers(built, 2), r = version_numbers(running, 2);
  if (hardware_compatible) return !r.empty() && r[0] >= kHardwareCompatibleMinMajor;
  return b == r;
}

}  // namespace vit_deploy
