//! Which device the candle-backend tests run on: `candle-cpu` by default (CI
//! has no GPU); `FEATMUX_TEST_CANDLE_BACKEND=cuda:0` runs the same tests on a
//! GPU (`scripts/gpu-check.sh` does).

use featmux_engine::backend::BackendKind;

/// The candle backend under test.
pub fn candle_backend() -> BackendKind {
    match std::env::var("FEATMUX_TEST_CANDLE_BACKEND") {
        Ok(name) => name
            .parse()
            .unwrap_or_else(|e| panic!("FEATMUX_TEST_CANDLE_BACKEND: {e}")),
        Err(_) => BackendKind::CandleCpu,
    }
}

/// The candle device of [`candle_backend`].
pub fn candle_device() -> candle_core::Device {
    candle_backend()
        .candle_device()
        .expect("the test backend's device")
}

/// The memory the default budget is derived from: the GPU's total memory
/// for `cuda:N` (on a GPU run), none for the host backends.
#[test]
fn device_memory_is_known_for_gpu_backends_only() {
    assert_eq!(BackendKind::Cpu.device_memory().unwrap(), None);
    assert_eq!(BackendKind::CandleCpu.device_memory().unwrap(), None);
    match candle_backend() {
        BackendKind::CandleCuda(n) => {
            let bytes = BackendKind::CandleCuda(n).device_memory().unwrap();
            assert!(bytes.is_some_and(|b| b >= 1 << 30), "cuda:{n}: {bytes:?}");
        }
        other => assert_eq!(other.device_memory().unwrap(), None),
    }
    if !cfg!(feature = "cuda") {
        let err = BackendKind::CandleCuda(0).device_memory().unwrap_err();
        assert!(err.to_string().contains("built without"), "{err}");
    }
}
