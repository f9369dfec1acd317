//! Any template and event data; see `hookline_shared::properties::template_rendering`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hookline_shared::properties::template_rendering(data));
