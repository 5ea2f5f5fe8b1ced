//! The backends' tests, in one binary so that a GPU machine needs only this
//! one beside `featmux` (`scripts/build-cuda.sh` builds it, `scripts/gpu-check.sh`
//! runs it with `FEATMUX_TEST_CANDLE_BACKEND=cuda:0`).

mod concurrency;
mod device;
mod differential;
mod download;
mod numerics;
mod row_ops;
