//! The firehost CLI.
fn main() {}
