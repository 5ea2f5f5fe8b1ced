//! Protobuf bytes as a `PushRequest` (whose batch is a lookup's too): decode
//! → batch and gradient conversion (in the push's precision) → planning → lookup and un-pooling.
#![no_main]

use featmux_proto::v1 as pb;
use featmux_server::convert;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = pb::PushRequest::decode(data) else {
        return;
    };
    // The push's own precision, as the server reads it.
    if let Ok(precision) = pb::Precision::from_field(request.precision) {
        let _ = convert::gradients_from_pb(request.gradients, precision);
    }
    if let Some(pb::push_request::Target::Batch(batch)) = request.target {
        if let Ok(batch) = convert::batch_from_pb(Some(batch)) {
            featmux_fuzz::exercise(&batch);
        }
    }
});
