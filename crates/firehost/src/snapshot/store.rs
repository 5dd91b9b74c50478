//! The snapshot store: listing, inspecting, verifying, deleting, collecting and merging bundles.
