//! JSON bytes as serving examples: the entry count, the examples decoder
//! (per feature and concatenated) → planning → lookup and un-pooling.
#![no_main]

use featmux_server::examples::{self, Example};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(examples) = serde_json::from_slice::<Vec<Example>>(data) else {
        return;
    };
    let features = featmux_fuzz::table().features();
    let _ = examples::entries(&features, &examples);
    for concat in [false, true] {
        // Each batch takes the examples' strings: hand it its own copy.
        let mut examples = examples.clone();
        if let Ok(batch) =
            examples::batch(&features, &mut examples, concat, featmux_fuzz::MAX_ENTRIES)
        {
            featmux_fuzz::exercise(&batch);
        }
    }
});
