// Tensor arguments crossing the Python boundary, and the checks every bound function runs.
//
// The modules do not link libtorch.  Python passes each tensor as a tuple
//     (data_ptr: int, dtype: str, device_type: str, device_index: int, shape: tuple, strides: tuple)
// (see solar/ops/_native.py::_arg) and the C++ side validates it here.  Every failure raises a
// Python TypeError (wrong kind or dtype) or ValueError (shape, stride, device, null pointer) whose
// message starts with the argument's name, so a bad call never reaches a kernel.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>

namespace solar {

namespace py = pybind11;

enum class DType { F32, BF16, F16, F64, U8, Bool, Other };

inline DType parse_dtype(const std::string& s) {
  if (s == "float32") return DType::F32;
  if (s == "bfloat16") return DType::BF16;
  if (s == "float16") return DType::F16;
  if (s == "float64") return DType::F64;
  if (s == "uint8") return DType::U8;
  if (s == "bool") return DType::Bool;
  return DType::Other;
}

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    case DType::F64: return "float64";
    case DType::U8: return "uint8";
    case DType::Bool: return "bool";
    default: return "other";
  }
}

constexpr int kMaxDims = 4;

struct TensorArg {
  std::string name;
  std::uintptr_t ptr = 0;
  DType dtype = DType::Other;
  std::string dtype_str;
  std::string device;      // "cpu" or "cuda"
  int device_index = -1;
  int ndim = 0;
  std::int64_t shape[kMaxDims] = {0, 0, 0, 0};
  std::int64_t stride[kMaxDims] = {0, 0, 0, 0};

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  template <typename T> T* data() const { return reinterpret_cast<T*>(ptr); }
};

[[noreturn]] inline void value_error(const std::string& name, const std::string& what) {
  throw py::value_error("argument '" + name + "': " + what);
}
[[noreturn]] inline void type_error(const std::string& name, const std::string& what) {
  throw py::type_error("argument '" + name + "': " + what);
}

inline std::string shape_str(const TensorArg& t) {
  std::string s = "(";
  for (int i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
  return s + (t.ndim == 1 ? ",)" : ")");
}

inline std::int64_t as_int(const std::string& name, const char* field, py::handle h) {
  if (!py::isinstance<py::int_>(h) || py::isinstance<py::bool_>(h))
    type_error(name, std::string(field) + " must be an int");
  return h.cast<std::int64_t>();
}

// Parse one tensor tuple; `device` is the device type this module runs on ("cpu" or "cuda").
inline TensorArg parse_tensor(const char* name, py::handle obj, const char* device, int ndim) {
  TensorArg t;
  t.name = name;
  if (!py::isinstance<py::tuple>(obj))
    type_error(name, "expected a tensor description tuple (ptr, dtype, device, index, shape, "
                     "strides), got " + std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto tup = py::reinterpret_borrow<py::tuple>(obj);
  if (tup.size() != 6) value_error(name, "tensor description must have 6 fields");
  std::int64_t p = as_int(name, "data pointer", tup[0]);
  if (!py::isinstance<py::str>(tup[1])) type_error(name, "dtype must be a str");
  if (!py::isinstance<py::str>(tup[2])) type_error(name, "device type must be a str");
  if (!py::isinstance<py::tuple>(tup[4]) || !py::isinstance<py::tuple>(tup[5]))
    type_error(name, "shape and strides must be tuples");
  t.ptr = static_cast<std::uintptr_t>(p);
  t.dtype_str = tup[1].cast<std::string>();
  t.dtype = parse_dtype(t.dtype_str);
  t.device = tup[2].cast<std::string>();
  t.device_index = static_cast<int>(as_int(name, "device index", tup[3]));
  auto shape = py::reinterpret_borrow<py::tuple>(tup[4]);
  auto strides = py::reinterpret_borrow<py::tuple>(tup[5]);
  if (shape.size() != strides.size()) value_error(name, "shape and strides differ in length");
  t.ndim = static_cast<int>(shape.size());
  if (t.ndim != ndim)
    value_error(name, "must have " + std::to_string(ndim) + " dimensions, got " +
                          std::to_string(t.ndim));
  for (int i = 0; i < t.ndim; ++i) {
    t.shape[i] = as_int(name, "shape", shape[i]);
    t.stride[i] = as_int(name, "strides", strides[i]);
    if (t.shape[i] < 0) value_error(name, "negative size in shape " + shape_str(t));
    if (t.stride[i] < 0) value_error(name, "negative strides are not supported");
  }
  if (t.device != device)
    value_error(name, "must be a " + std::string(device) + " tensor, got device '" + t.device + "'");
  if (t.ptr == 0 && t.numel() > 0) value_error(name, "null data pointer");
  if (p < 0) value_error(name, "invalid data pointer");
  return t;
}

inline void expect_dtype(const TensorArg& t, std::initializer_list<DType> allowed) {
  for (DType d : allowed)
    if (t.dtype == d) return;
  std::string names;
  for (DType d : allowed) names += std::string(names.empty() ? "" : " or ") + dtype_name(d);
  type_error(t.name, "dtype must be " + names + ", got " + t.dtype_str);
}

inline void expect_same_dtype(const TensorArg& t, const TensorArg& ref) {
  if (t.dtype != ref.dtype)
    type_error(t.name, "dtype " + t.dtype_str + " differs from " + ref.name + "'s " + ref.dtype_str);
}

inline void expect_size(const TensorArg& t, int dim, std::int64_t size, const std::string& what) {
  if (t.shape[dim] != size)
    value_error(t.name, "size " + std::to_string(t.shape[dim]) + " along dim " +
                            std::to_string(dim) + " does not match " + what + " (" +
                            std::to_string(size) + "); shape " + shape_str(t));
}

inline void expect_nonempty(const TensorArg& t) {
  for (int i = 0; i < t.ndim; ++i)
    if (t.shape[i] == 0) value_error(t.name, "must not be empty, got shape " + shape_str(t));
}

// Unit stride along the last dimension (rows may be strided).
inline void expect_last_contiguous(const TensorArg& t) {
  if (t.ndim > 0 && t.shape[t.ndim - 1] > 1 && t.stride[t.ndim - 1] != 1)
    value_error(t.name, "last dimension must have stride 1, got strides with last " +
                            std::to_string(t.stride[t.ndim - 1]));
}

// Dense row-major layout.
inline void expect_contiguous(const TensorArg& t) {
  std::int64_t expected = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    if (t.shape[i] > 1 && t.stride[i] != expected)
      value_error(t.name, "must be contiguous (row-major), shape " + shape_str(t) +
                              " has stride " + std::to_string(t.stride[i]) + " at dim " +
                              std::to_string(i));
    expected *= t.shape[i];
  }
}

inline void expect_same_device(const TensorArg& t, const TensorArg& ref) {
  if (t.device_index != ref.device_index)
    value_error(t.name, "is on device index " + std::to_string(t.device_index) + " but " +
                            ref.name + " is on " + std::to_string(ref.device_index));
}

}  // namespace solar
