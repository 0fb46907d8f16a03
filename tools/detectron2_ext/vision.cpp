// detectron2._C for lt_det's CPU build of detectron2 0.6 (PyPI sdist `pb1-detectron2`, which ships
// without C++ sources). Axis-aligned Faster/Mask R-CNN runs on torchvision ops and needs none of
// this; the ops below exist so that importing detectron2 works and so that calling an op this
// build lacks fails with a message naming it, instead of an ImportError or a missing-symbol crash.
#include <torch/extension.h>
#include <torch/library.h>

#include <sstream>
#include <string>

namespace lt_det_d2_ext {

std::string missing_message(const std::string& op) {
  return "detectron2 op '" + op +
         "' is not available: this detectron2 was built by lt_det (tools/setup_env.sh) with a "
         "minimal C++ extension that provides no rotated-box, deformable-convolution or C++ "
         "COCO-evaluation kernels. Use axis-aligned models (lt_det's configs do), "
         "COCOEvaluator(use_fast_impl=False), or install a full detectron2 build.";
}

[[noreturn]] void fail(const std::string& op) {
  throw std::runtime_error(missing_message(op));
}

std::string get_compiler_version() {
  std::ostringstream ss;
#if defined(__GNUC__) && !defined(__clang__)
  ss << "GCC " << __GNUC__ << "." << __GNUC_MINOR__;
#elif defined(__clang_major__)
  ss << "clang " << __clang_major__ << "." << __clang_minor__;
#else
  ss << "unknown";
#endif
  return ss.str();
}

std::string get_cuda_version() { return "not available (lt_det CPU build)"; }

bool has_cuda() { return false; }

// Typed stubs for the ops detectron2 dispatches through torch.ops.detectron2.*.
at::Tensor nms_rotated(const at::Tensor&, const at::Tensor&, double) { fail("nms_rotated"); }

at::Tensor box_iou_rotated(const at::Tensor&, const at::Tensor&) { fail("box_iou_rotated"); }

at::Tensor roi_align_rotated_forward(const at::Tensor&, const at::Tensor&, double, int64_t, int64_t,
                                     int64_t) {
  fail("roi_align_rotated_forward");
}

at::Tensor roi_align_rotated_backward(const at::Tensor&, const at::Tensor&, double, int64_t,
                                      int64_t, int64_t, int64_t, int64_t, int64_t, int64_t) {
  fail("roi_align_rotated_backward");
}

}  // namespace lt_det_d2_ext

namespace py = pybind11;
using namespace lt_det_d2_ext;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("get_compiler_version", &get_compiler_version, "compiler used to build this extension");
  m.def("get_cuda_version", &get_cuda_version, "CUDA version of this extension (none)");
  m.def("has_cuda", &has_cuda, "whether this extension has CUDA kernels (no)");
  // Python-level entry points of detectron2 0.6 that this build lacks: each raises a clear error.
  const char* missing[] = {
      "box_iou_rotated",           "nms_rotated",
      "roi_align_rotated_forward", "roi_align_rotated_backward",
      "deform_conv_forward",       "deform_conv_backward_input",
      "deform_conv_backward_filter", "modulated_deform_conv_forward",
      "modulated_deform_conv_backward", "COCOevalAccumulate",
      "COCOevalEvaluateImages",    "InstanceAnnotation",
      "ImageEvaluation"};
  for (const char* name : missing) {
    std::string op(name);
    m.def(name, [op](py::args, py::kwargs) { fail(op); });
  }
  m.def("missing_op_message", &missing_message, "the error text raised by a missing op");
}

TORCH_LIBRARY(detectron2, m) {
  m.def("nms_rotated", &nms_rotated);
  m.def("box_iou_rotated", &box_iou_rotated);
  m.def("roi_align_rotated_forward", &roi_align_rotated_forward);
  m.def("roi_align_rotated_backward", &roi_align_rotated_backward);
}
