// Run a vit-deploy TensorRT engine artifact from C++: read manifest.json, check it matches this
// TensorRT, deserialize model.<precision>.plan, run one batch, print the top-5 per image.
//
//   vit_infer ARTIFACT_DIR IMAGES.f32 [BATCH]
//
// IMAGES.f32: raw float32 [BATCH, 3, H, W] preprocessed as the manifest says; make it with
// `python examples/cpp/make_input.py ARTIFACT_DIR cat.jpg dog.jpg -o images.f32`.
// Written against the TensorRT 11 C++ API (IRuntime::deserializeCudaEngine,
// IExecutionContext::setInputShape / setTensorAddress / enqueueV3); not compiled here: the
// development machines have no TensorRT headers (see README.md).
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <fstream>
#include <iostream>
#include <iterator>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << "\n";
  }
};

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot open " + path);
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

std::string trt_version() {
  const int v = getInferLibVersion();  // e.g. 110100 for 11.1.0 (major*10000 + minor*100 + patch)
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc < 3) {
    std::cerr << "usage: vit_infer ARTIFACT_DIR IMAGES.f32 [BATCH]\n";
    return 1;
  }
  const std::string dir = argv[1];
  const auto manifest = nlohmann::json::parse(read_file(dir + "/manifest.json"));
  if (manifest.at("kind") != "tensorrt") throw std::runtime_error(dir + " is not a TensorRT engine artifact");

  // The plan only runs on the TensorRT version it was built with (unless version-compatible):
  // compare before deserializing, naming both sides, as vit_deploy.runtime does.
  const auto& built = manifest.at("tensorrt");
  const std::string recorded = built.at("version");
  if (!built.value("version_compatible", false) && recorded.rfind(trt_version(), 0) != 0 &&
      trt_version().rfind(recorded, 0) != 0) {
    throw std::runtime_error("engine built with TensorRT " + recorded + ", this program links TensorRT " +
                             trt_version() + ": rebuild it with vit-deploy build-engine");
  }
  std::string plan_file;
  for (const auto& f : manifest.at("files"))
    if (f.at("role") == "model") plan_file = f.at("path");
  const auto& in = manifest.at("io").at("inputs").at(0);
  const auto& out = manifest.at("io").at("outputs").at(0);
  const std::string in_name = in.at("name"), out_name = out.at("name");
  const int channels = in.at("shape").at(1), height = in.at("shape").at(2), width = in.at("shape").at(3);
  const int classes = out.at("shape").at(1);

  const auto images = read_file(argv[2]);
  const size_t per_image = size_t(channels) * height * width;
  const int batch = argc > 3 ? std::stoi(argv[3]) : int(images.size() / (per_image * sizeof(float)));
  if (batch < 1 || images.size() != batch * per_image * sizeof(float))
    throw std::runtime_error(std::string(argv[2]) + " does not hold float32 [" + std::to_string(batch) + ", " +
                             std::to_string(channels) + ", " + std::to_string(height) + ", " + std::to_string(width) +
                             "]");

  Logger logger;
  auto runtime = std::unique_ptr<nvinfer1::IRuntime>(nvinfer1::createInferRuntime(logger));
  runtime->setEngineHostCodeAllowed(built.value("version_compatible", false));
  const auto plan = read_file(dir + "/" + plan_file);
  auto engine = std::unique_ptr<nvinfer1::ICudaEngine>(runtime->deserializeCudaEngine(plan.data(), plan.size()));
  if (!engine) throw std::runtime_error("TensorRT refused " + plan_file + " (corrupt, or built for another GPU)");
  auto context = std::unique_ptr<nvinfer1::IExecutionContext>(engine->createExecutionContext());

  // Batch within the optimization profile (profile 0: the one vit-deploy builds).
  const auto max_dims = engine->getProfileShape(in_name.c_str(), 0, nvinfer1::OptProfileSelector::kMAX);
  if (batch > max_dims.d[0])
    throw std::runtime_error("batch " + std::to_string(batch) + " is above the engine's profile maximum " +
                             std::to_string(max_dims.d[0]) + ": split it");
  context->setInputShape(in_name.c_str(), nvinfer1::Dims4{batch, channels, height, width});

  void* d_in = nullptr;
  void* d_out = nullptr;
  check(cudaMalloc(&d_in, images.size()), "cudaMalloc input");
  check(cudaMalloc(&d_out, size_t(batch) * classes * sizeof(float)), "cudaMalloc output");
  cudaStream_t stream;
  check(cudaStreamCreate(&stream), "cudaStreamCreate");
  check(cudaMemcpyAsync(d_in, images.data(), images.size(), cudaMemcpyHostToDevice, stream), "copy in");
  context->setTensorAddress(in_name.c_str(), d_in);
  context->setTensorAddress(out_name.c_str(), d_out);
  if (!context->enqueueV3(stream)) throw std::runtime_error("TensorRT execution failed");
  std::vector<float> logits(size_t(batch) * classes);
  check(cudaMemcpyAsync(logits.data(), d_out, logits.size() * sizeof(float), cudaMemcpyDeviceToHost, stream),
        "copy out");
  check(cudaStreamSynchronize(stream), "synchronize");

  for (int b = 0; b < batch; ++b) {
    const float* row = logits.data() + size_t(b) * classes;
    const float top = *std::max_element(row, row + classes);
    double sum = 0;
    for (int c = 0; c < classes; ++c) sum += std::exp(double(row[c] - top));
    std::vector<int> order(classes);
    std::iota(order.begin(), order.end(), 0);
    const int k = std::min(5, classes);
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
