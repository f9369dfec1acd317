//! Replays the saved fuzz corpus (`shared/tests/corpus/<target>/*`) through the same
//! properties the cargo-fuzz targets check, so every input that once found a bug, and
//! the seeds, are rechecked by `make test` without a fuzzer.

use std::path::Path;

fn replay(target: &str, property: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        property(&data);
        count += 1;
    }
    assert!(count > 0, "{} holds no inputs", dir.display());
}

#[test]
fn event_parsing_corpus() {
    replay("event", hookline_shared::properties::event_parsing);
}

#[test]
fn pattern_matching_corpus() {
    replay("pattern", hookline_shared::properties::pattern_matching);
}

#[test]
fn template_rendering_corpus() {
    replay("template", hookline_shared::properties::template_rendering);
}
