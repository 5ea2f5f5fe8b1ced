//! Protobuf bytes as a `PushRequest` (whose batch is a lookup's too): decode
//! → batch and gradient conversion (in the push's precision) → planning → lookup and un-pooling.
#![no_main]

use featmux_engine::gradients::GradientSource;
use featmux_proto::v1 as pb;
use featmux_server::convert;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = pb::PushRequest::decode(data) else {
        return;
    };
    // The push's own precision, as the server reads it: every float read
    // in place, in rows as a push sums them, and as its error names them.
    if let Ok(precision) = pb::Precision::from_field(request.precision) {
        for block in convert::gradients_from_pb(request.gradients, precision).unwrap_or_default() {
            let gradients = &block.data;
            let mut row = [0f32; 16];
            for start in (0..gradients.floats()).step_by(row.len()) {
                let n = (gradients.floats() - start).min(row.len());
                gradients.add_scaled_to(start, 1.0, &mut row[..n]);
            }
            let _ = gradients.first_non_finite();
        }
    }
    if let Some(pb::push_request::Target::Batch(batch)) = request.target {
        if let Ok(batch) = convert::batch_from_pb(Some(batch)) {
            featmux_fuzz::exercise(&batch);
        }
    }
});
