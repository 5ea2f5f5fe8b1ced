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
