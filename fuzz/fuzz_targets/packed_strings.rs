//! Packed strings: arbitrary data and length bytes (the first byte says
//! where they split). A accepted pair must describe exactly its data.
#![no_main]

use featmux_engine::batch::PackedStrings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&split, rest)) = input.split_first() else {
        return;
    };
    let split = (split as usize).min(rest.len());
    let (data, lengths) = rest.split_at(split);
    let Ok(packed) = PackedStrings::new(data.to_vec().into(), lengths) else {
        return;
    };
    let total: usize = (0..packed.len()).map(|i| packed.get(i).len()).sum();
    assert_eq!(total, data.len(), "the values cover the data exactly");
    assert_eq!(packed.lengths_le(), lengths);
});
