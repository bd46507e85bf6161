//! The one writer of generated sections in docs/benchmarks.md: each
//! benchmark owns the text between its two markers and nothing else, so the
//! hand-written analysis around it survives every run. Plain std, so the
//! benchmark binaries that include modules by path can share it too.

use std::path::Path;

/// Replaces the text between `begin` and `end` in `path` with `section` (which carries both markers);
/// without the markers, appends `section` under `heading` (other benchmarks own the rest of the page).
pub fn replace_section(path: &Path, begin: &str, end: &str, section: &str, heading: &str) -> std::io::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let text = match (existing.find(begin), existing.find(end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{}{}", &existing[..b], section.trim_end(), &existing[e + end.len()..])
        }
        _ if !existing.trim().is_empty() => format!("{}\n\n{heading}\n\n{section}", existing.trim_end()),
        _ => format!("# Benchmarks\n\nRun with `make bench`.\n\n{heading}\n\n{section}"),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)
}
