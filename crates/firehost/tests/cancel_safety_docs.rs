//! Every public async function of the library crates says what happens
//! when its future is dropped: a `# Cancel safety` section or a "Cancel
//! safe" sentence in its doc comment.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `file:line: fn` of each public async fn whose doc comment is silent on
/// cancellation.
fn undocumented(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.trim_start().starts_with("pub async fn ") {
            continue;
        }
        let doc: Vec<&str> = lines[..i]
            .iter()
            .rev()
            .take_while(|l| {
                let l = l.trim_start();
                l.starts_with("///") || l.starts_with("#[")
            })
            .copied()
            .collect();
        let says = doc
            .iter()
            .any(|l| l.contains("Cancel safety") || l.contains("ancel safe"));
        if !says {
            found.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
        }
    }
    found
}

#[test]
fn every_public_async_fn_documents_its_cancel_safety() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in ["firehost", "firehost-proto", "firehost-api"] {
        rust_files(&crates.join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 20, "the sources were not found: {files:?}");
    let missing: Vec<String> = files.iter().flat_map(|f| undocumented(f)).collect();
    assert!(
        missing.is_empty(),
        "public async fns without a cancel-safety note:\n{}",
        missing.join("\n")
    );
}
