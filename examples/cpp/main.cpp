// Run a vit-deploy TensorRT engine artifact from C++: read manifest.json, check that the plan is the
// one it describes and that it may run on this TensorRT, deserialize model.<precision>.plan, run
// one batch, print the top-5 classes per image.
//
//   vit_infer ARTIFACT_DIR IMAGES.f32 [BATCH [HxW]]
//
// IMAGES.f32: raw float32 [BATCH, 3, H, W] preprocessed as the manifest says; make it with
// `python examples/cpp/make_input.py ARTIFACT_DIR cat.jpg dog.jpg -o images.f32`. An engine built from a
// --dynamic-res export takes any H x W inside its optimization profile (read from the manifest, then
// from the engine itself): pass HxW (default: the profile's opt size, the native one).
// TensorRT 11 C++ API: IRuntime::deserializeCudaEngine, ICudaEngine::getProfileShape /
// getTensorDataType, IExecutionContext::setInputShape / getTensorShape / setTensorAddress / enqueueV3.
// Every failure is one line on stderr and exit code 1.
#include <NvInfer.h>
#include <NvInferVersion.h>
#include <cuda_runtime_api.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "compat.hpp"
#include "sha256.hpp"

namespace {

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << "\n";
  }
};

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

std::vector<char> read_file(const std::string& path, const std::string& what) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot open " + what + " " + path);
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

// The TensorRT this program runs: the library's major.minor.patch, plus the build number from the
// headers when they are of that same release (the library reports no build number itself).
std::string runtime_version() {
  const int v = getInferLibVersion();  // major * 10000 + minor * 100 + patch, e.g. 110400
  const int major = v / 10000, minor = v / 100 % 100, patch = v % 100;
  std::string text = std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
  if (major == NV_TENSORRT_MAJOR && minor == NV_TENSORRT_MINOR && patch == NV_TENSORRT_PATCH)
    text += "." + std::to_string(NV_TENSORRT_BUILD);
  return text;
}

std::string dims_text(const nvinfer1::Dims& d) {
  std::string s = "[";
  for (int i = 0; i < d.nbDims; ++i) s += (i ? ", " : "") + std::to_string(d.d[i]);
  return s + "]";
}

struct Manifest {
  std::string plan_file, plan_sha256, in_name, out_name, version;
  bool version_compatible = false, dynamic_size = false;
  int channels = 0, height = 0, width = 0, classes = 0, min_batch = 1, max_batch = 0;
  // the profile's image sizes: min, opt and max height and width (all equal for a fixed-size engine)
  int min_h = 0, min_w = 0, opt_h = 0, opt_w = 0, max_h = 0, max_w = 0;
};

Manifest read_manifest(const std::string& dir) {
  const std::string path = dir + "/manifest.json";
  const auto text = read_file(path, "the artifact's manifest");
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path + " is not valid JSON (" + e.what() + "): re-create the engine artifact");
  }
  try {
    if (m.at("kind") != "tensorrt")
      throw std::runtime_error(dir + " is not a TensorRT engine artifact (kind " + m.at("kind").dump() +
                               "): pass the folder vit-deploy build-engine wrote");
    Manifest out;
    for (const auto& f : m.at("files"))
      if (f.at("role") == "model") out.plan_file = f.at("path"), out.plan_sha256 = f.at("sha256");
    if (out.plan_file.empty()) throw std::runtime_error(path + " lists no model file: re-create the engine artifact");
    const auto& in = m.at("io").at("inputs").at(0);
    const auto& outp = m.at("io").at("outputs").at(0);
    out.in_name = in.at("name");
    out.out_name = outp.at("name");
    out.channels = in.at("shape").at(1);
    // a --dynamic-res graph names its height and width ("height", "width"): the profile bounds them
    out.dynamic_size = !in.at("shape").at(2).is_number_integer();
    out.classes = outp.at("shape").at(1);
    const auto& built = m.at("tensorrt");
    out.version = built.at("version");
    out.version_compatible = built.value("version_compatible", false);
    const auto& profile = built.at("profile").at(out.in_name);
    out.min_batch = profile.at("min").at(0), out.max_batch = profile.at("max").at(0);
    out.min_h = profile.at("min").at(2), out.min_w = profile.at("min").at(3);
    out.opt_h = profile.at("opt").at(2), out.opt_w = profile.at("opt").at(3);
    out.max_h = profile.at("max").at(2), out.max_w = profile.at("max").at(3);
    if (out.dynamic_size) {
      out.height = out.opt_h, out.width = out.opt_w;
    } else {
      out.height = in.at("shape").at(2), out.width = in.at("shape").at(3);
    }
    return out;
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path + " is not a vit-deploy engine manifest (" + e.what() +
                             "): re-create the engine artifact");
  }
}

void check_batch(int batch, int lo, int hi, const char* source) {
  if (batch < lo)
    throw std::runtime_error("batch " + std::to_string(batch) + " is below the engine's profile minimum " +
                             std::to_string(lo) + " (" + source + "): give at least " + std::to_string(lo) + " images");
  if (batch > hi)
    throw std::runtime_error("batch " + std::to_string(batch) + " is above the engine's profile maximum " +
                             std::to_string(hi) + " (" + source + "): split it into batches of at most " +
                             std::to_string(hi));
}

void check_size(int height, int width, int min_h, int min_w, int max_h, int max_w, const char* source) {
  if (height < min_h || height > max_h || width < min_w || width > max_w)
    throw std::runtime_error("images of " + std::to_string(height) + "x" + std::to_string(width) +
                             " are outside the engine's profile (" + source + "): height " + std::to_string(min_h) +
                             " to " + std::to_string(max_h) + ", width " + std::to_string(min_w) + " to " +
                             std::to_string(max_w) + "; resize them into it, or rebuild the engine with "
                             "--min-res/--max-res covering this size");
}

// "HxW" -> {H, W}; one line naming the argument otherwise.
std::array<int, 2> parse_size(const std::string& text) {
  const auto x = text.find('x');
  try {
    size_t used_h = 0, used_w = 0;
    if (x == std::string::npos) throw std::invalid_argument("no x");
    const int h = std::stoi(text.substr(0, x), &used_h), w = std::stoi(text.substr(x + 1), &used_w);
    if (used_h != x || used_w != text.size() - x - 1 || h < 1 || w < 1) throw std::invalid_argument("bad");
    return {h, w};
  } catch (const std::exception&) {
    throw std::runtime_error("HxW must be the image height and width in pixels, e.g. 384x512, not " + text);
  }
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc < 3 || argc > 5) {
    std::cerr << "usage: vit_infer ARTIFACT_DIR IMAGES.f32 [BATCH [HxW]]\n";
    return 1;
  }
  const std::string dir = argv[1];
  Manifest m = read_manifest(dir);
  if (argc > 4) {
    const auto size = parse_size(argv[4]);
    if (!m.dynamic_size && (size[0] != m.height || size[1] != m.width))
      throw std::runtime_error("this engine takes " + std::to_string(m.height) + "x" + std::to_string(m.width) +
                               " images only (a fixed-resolution export); drop " + argv[4] +
                               " or build the engine from a --dynamic-res export");
    m.height = size[0], m.width = size[1];
  }
  check_size(m.height, m.width, m.min_h, m.min_w, m.max_h, m.max_w, "manifest");

  // A plan runs only where it may (vit_deploy/data/trt_compatibility.json): check before deserializing,
  // naming both sides, as vit_deploy.runtime does.
  const std::string running = runtime_version();
  if (!vit_deploy::version_allowed(m.version, running, m.version_compatible))
    throw std::runtime_error("engine built with TensorRT " + m.version + ", this program runs TensorRT " + running +
                             (m.version_compatible ? " (version-compatible plans need the same or a later runtime)"
                                                   : " (a plan needs the exact version that built it)") +
                             ": rebuild it with vit-deploy build-engine on this machine");

  const auto plan = read_file(dir + "/" + m.plan_file, "the engine plan");
  const std::string digest = vit_deploy::sha256_hex(plan.data(), plan.size());
  if (digest != m.plan_sha256)
    throw std::runtime_error(m.plan_file + " has sha256 " + digest + " but the manifest records " + m.plan_sha256 +
                             ": the plan was altered or replaced; re-create the engine artifact");

  const auto images = read_file(argv[2], "the input images");
  const size_t per_image = size_t(m.channels) * m.height * m.width * sizeof(float);
  int batch = 0;
  try {
    batch = argc > 3 ? std::stoi(argv[3]) : int(images.size() / per_image);
  } catch (const std::exception&) {
    throw std::runtime_error(std::string("BATCH must be a whole number, not ") + argv[3]);
  }
  check_batch(batch, m.min_batch, m.max_batch, "manifest");
  if (images.size() != size_t(batch) * per_image)
    throw std::runtime_error(std::string(argv[2]) + " holds " + std::to_string(images.size()) +
                             " bytes, not float32 [" + std::to_string(batch) + ", " + std::to_string(m.channels) +
                             ", " + std::to_string(m.height) + ", " + std::to_string(m.width) +
                             "]: write it with examples/cpp/make_input.py");

  Logger logger;
  std::unique_ptr<nvinfer1::IRuntime> runtime{nvinfer1::createInferRuntime(logger)};
  if (!runtime)
    throw std::runtime_error("TensorRT " + running + " could not create a runtime: it needs an NVIDIA GPU with a "
                             "working CUDA driver (check with nvidia-smi)");
  runtime->setEngineHostCodeAllowed(m.version_compatible);  // VC plans embed the lean runtime as host code
  std::unique_ptr<nvinfer1::ICudaEngine> engine{runtime->deserializeCudaEngine(plan.data(), plan.size())};
  if (!engine)
    throw std::runtime_error("TensorRT refused " + m.plan_file + " (see its log above): corrupt, or built for another "
                             "TensorRT or GPU; rebuild it with vit-deploy build-engine on this machine");

  // The engine itself, not only its manifest: profile 0 (the one vit-deploy builds), types and shapes.
  const auto in = m.in_name.c_str(), out = m.out_name.c_str();
  const auto lo = engine->getProfileShape(in, 0, nvinfer1::OptProfileSelector::kMIN);
  const auto hi = engine->getProfileShape(in, 0, nvinfer1::OptProfileSelector::kMAX);
  if (lo.nbDims != 4 || hi.nbDims != 4)
    throw std::runtime_error("the engine has no NCHW profile for input '" + m.in_name + "': rebuild it");
  check_batch(batch, int(lo.d[0]), int(hi.d[0]), "engine");
  check_size(m.height, m.width, int(lo.d[2]), int(lo.d[3]), int(hi.d[2]), int(hi.d[3]), "engine");
  for (const char* name : {in, out})
    if (engine->getTensorDataType(name) != nvinfer1::DataType::kFLOAT)
      throw std::runtime_error(std::string("tensor '") + name + "' is not float32 in this engine; this program "
                               "reads and writes float32 (vit-deploy engines keep float32 I/O)");

  std::unique_ptr<nvinfer1::IExecutionContext> context{engine->createExecutionContext()};
  if (!context) throw std::runtime_error("TensorRT could not create an execution context: free GPU memory");
  if (!context->setInputShape(in, nvinfer1::Dims4{batch, m.channels, m.height, m.width}))
    throw std::runtime_error("TensorRT refused input shape [" + std::to_string(batch) + ", " +
                             std::to_string(m.channels) + ", " + std::to_string(m.height) + ", " +
                             std::to_string(m.width) + "] for '" + m.in_name + "' (profile " + dims_text(lo) +
                             " to " + dims_text(hi) + ")");
  const auto out_dims = context->getTensorShape(out);
  if (out_dims.nbDims != 2 || out_dims.d[0] != batch || out_dims.d[1] != m.classes)
    throw std::runtime_error("output '" + m.out_name + "' has shape " + dims_text(out_dims) + ", expected [" +
                             std::to_string(batch) + ", " + std::to_string(m.classes) + "]: rebuild the engine");

  void* d_in = nullptr;
  void* d_out = nullptr;
  cudaStream_t stream = nullptr;
  check(cudaMalloc(&d_in, images.size()), "cudaMalloc input");
  check(cudaMalloc(&d_out, size_t(batch) * m.classes * sizeof(float)), "cudaMalloc output");
  check(cudaStreamCreate(&stream), "cudaStreamCreate");
  check(cudaMemcpyAsync(d_in, images.data(), images.size(), cudaMemcpyHostToDevice, stream), "copy in");
  if (!context->setTensorAddress(in, d_in) || !context->setTensorAddress(out, d_out))
    throw std::runtime_error("TensorRT refused the device buffers (see its log above)");
  if (!context->enqueueV3(stream)) throw std::runtime_error("TensorRT execution failed (see its log above)");
  std::vector<float> logits(size_t(batch) * m.classes);
  check(cudaMemcpyAsync(logits.data(), d_out, logits.size() * sizeof(float), cudaMemcpyDeviceToHost, stream),
        "copy out");
  check(cudaStreamSynchronize(stream), "synchronize");

  for (int b = 0; b < batch; ++b) {
    const float* row = logits.data() + size_t(b) * m.classes;
    const float top = *std::max_element(row, row + m.classes);
    double sum = 0;
    for (int c = 0; c < m.classes; ++c) sum += std::exp(double(row[c] - top));
    std::vector<int> order(m.classes);
    std::iota(order.begin(), order.end(), 0);
    const int k = std::min(5, m.classes);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int c) { return row[a] > row[c]; });
    std::cout << "image " << b << ":";
    for (int i = 0; i < k; ++i)
      std::cout << "  class " << order[i] << " " << 100.0 * std::exp(double(row[order[i]] - top)) / sum << "%";
    std::cout << "\n";
  }
  cudaStreamDestroy(stream);
  cudaFree(d_in);
  cudaFree(d_out);
  return 0;
} catch (const std::exception& e) {
  std::cerr << "error: " << e.what() << "\n";
  return 1;
}
