//! JSON bytes as a serving lookup's body: the examples reader (per feature,
//! or every feature with `concat`) → planning → lookup and un-pooling.
#![no_main]

use featmux_server::http::bodies::LookupBody;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let features = featmux_fuzz::table().features();
    if let Ok(body) = LookupBody::read(data, &features, featmux_fuzz::MAX_ENTRIES) {
        featmux_fuzz::exercise(&body.examples.batch);
    }
});
