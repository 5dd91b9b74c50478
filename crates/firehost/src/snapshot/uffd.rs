//! The userfaultfd page server that serves a restored VM's memory from a bundle.
