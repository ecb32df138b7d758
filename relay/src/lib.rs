//! Not built yet: see the project issues. This crate exists so the workspace has its final shape.
