//! Device-to-host copies of lookup results through one reused page-locked
//! buffer.
//!
//! A plain download (`Tensor::to_vec1`) has the driver copy into pageable
//! memory, which it stages through its own pinned buffers page by page, and
//! a result of 32 MiB or more lands in a fresh `mmap` every call (glibc's
//! largest heap threshold). On an H100 a 32 MiB download took 50 ms against
//! 4.9 ms for 16 MiB (docs/results/gpu.md). Here the device copies into
//! page-locked host memory kept across calls, grown to the next power of
//! two when a larger result comes, and the host copies it out from there.
//! On candle's CPU device there is nothing to download: `to_vec1` it is.

use candle_core::{Result, Tensor};

/// One table's download buffer. Downloads take turns on it; the device's
/// one stream runs the copies one after another anyway.
#[derive(Default)]
pub struct Downloads {
    #[cfg(feature = "cuda")]
    pinned: parking_lot::Mutex<Option<cuda::Pinned>>,
}

impl Downloads {
    /// `tensor`'s values on the host, in row-major order.
    pub fn to_vec(&self, tensor: &Tensor) -> Result<Vec<f32>> {
        #[cfg(feature = "cuda")]
        if tensor.device().is_cuda() {
            return cuda::download(&mut self.pinned.lock(), tensor);
        }
        tensor.flatten_all()?.to_vec1()
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{result, DevicePtr, PinnedHostSlice};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{Result, Storage, Tensor};

    pub type Pinned = PinnedHostSlice<f32>;

    pub fn download(pinned: &mut Option<Pinned>, tensor: &Tensor) -> Result<Vec<f32>> {
        let tensor = tensor.contiguous()?;
        let n = tensor.elem_count();
        if n == 0 {
            return Ok(Vec::new());
        }
        let (storage, layout) = tensor.storage_and_layout();
        let Storage::Cuda(storage) = &*storage else {
            candle_core::bail!("download: the tensor is not on a CUDA device")
        };
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("download: not contiguous".into()))?;
        let src = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let stream = storage.device().cuda_stream();
        if pinned.as_ref().is_none_or(|buffer| buffer.len() < n) {
            // Free the smaller buffer before taking the larger one.
            *pinned = None;
            // SAFETY: every float this returns is written by a copy below
            // before it is read. Flags 0: cached memory, which the host
            // reads at full speed (write-combined memory, cudarc's default,
            // is for uploads).
            let buffer = unsafe {
                stream
                    .context()
                    .alloc_pinned_with_flags::<f32>(n.next_power_of_two(), 0)
            };
            *pinned = Some(buffer.w()?);
        }
        let host = pinned
            .as_mut()
            .expect("allocated above")
            .as_mut_slice()
            .w()?;
        {
            let (src_ptr, _read) = src.device_ptr(&stream);
            // SAFETY: `host[..n]` is page-locked memory for n floats and
            // `src_ptr` n floats on `stream`'s device; the synchronize below
            // keeps both alive and untouched until the copy has finished.
            // (cudarc's safe `memcpy_dtoh` copies the whole destination, so
            // it cannot fill the front of a larger buffer.)
            unsafe { result::memcpy_dtoh_async(&mut host[..n], src_ptr, stream.cu_stream()) }
                .w()?;
        }
        stream.synchronize().w()?;
        Ok(host[..n].to_vec())
    }
}
