/* The slice of the DLPack ABI (https://dmlc.github.io/dlpack/latest/, v1.x) that fastopt's
 * torch adapter reads: the non-owning "DLTensor from a Python object" entry of a framework's
 * DLPackExchangeAPI table, which torch publishes as the capsule
 * torch.Tensor.__dlpack_c_exchange_api__ (torch >= 2.10). One call fills a DLTensor (data
 * address, device, dtype, shape, strides) straight from the tensor object: no Python method
 * call, no allocation. The shape and strides point into the tensor and stay valid while the
 * tensor is alive and unchanged, i.e. within one fill with the GIL held.
 *
 * Only the layout of these structs matters (it is the ABI); the names are fastopt's own so that
 * this header never clashes with a real dlpack.h. The major version is checked before use
 * (fastopt/_kernels.pyx, set_dlpack_api). */
#ifndef FO_DLPACK_H
#define FO_DLPACK_H

#include <stdint.h>

enum { FO_DL_CPU = 1, FO_DL_CUDA_HOST = 3, FO_DL_ROCM_HOST = 11 };   /* DLDeviceType */
enum { FO_DL_INT = 0, FO_DL_UINT = 1, FO_DL_FLOAT = 2, FO_DL_BFLOAT = 4,
       FO_DL_COMPLEX = 5 };                                          /* DLDataTypeCode */

typedef struct { int32_t device_type; int32_t device_id; } fo_dl_device;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } fo_dl_dtype;

typedef struct {
    void *data;
    fo_dl_device device;
    int32_t ndim;
    fo_dl_dtype dtype;
    int64_t *shape;
    int64_t *strides;
    uint64_t byte_offset;
} fo_dl_tensor;

typedef struct { uint32_t major; uint32_t minor; } fo_dl_version;

typedef struct fo_dl_api_header {
    fo_dl_version version;
    struct fo_dl_api_header *prev_api;
} fo_dl_api_header;

/* 0 on success; -1 with a Python exception set. */
typedef int (*fo_dl_from_pyobject)(void *py_object, fo_dl_tensor *out);

typedef struct {
    fo_dl_api_header header;
    void *managed_tensor_allocator;
    void *managed_tensor_from_py_object_no_sync;
    void *managed_tensor_to_py_object_no_sync;
    fo_dl_from_pyobject dltensor_from_py_object_no_sync;
    void *current_work_stream;
} fo_dl_api;

#endif
