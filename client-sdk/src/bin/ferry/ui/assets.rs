//! The web app's files, embedded in the binary: `ferry ui` needs nothing beside it, and the
//! page loads nothing from anywhere else.

use super::http::{Reply, asset};

/// Each file of `client-sdk/ui/` the page loads, by its address.
macro_rules! files {
    ($($name:literal => $type:literal),* $(,)?) => {
        &[$((concat!("/", $name), $type, include_bytes!(concat!("../../../../ui/", $name)))),*]
    };
}

const FILES: &[(&str, &str, &[u8])] = files! {
    "index.html" => "text/html; charset=utf-8",
    "style.css" => "text/css; charset=utf-8",
    "icon.svg" => "image/svg+xml",
    "app.js" => "text/javascript; charset=utf-8",
    "api.js" => "text/javascript; charset=utf-8",
    "dom.js" => "text/javascript; charset=utf-8",
    "nav.js" => "text/javascript; charset=utf-8",
    "setup.js" => "text/javascript; charset=utf-8",
    "store.js" => "text/javascript; charset=utf-8",
    "calls.js" => "text/javascript; charset=utf-8",
    "chat.js" => "text/javascript; charset=utf-8",
    "chats.js" => "text/javascript; charset=utf-8",
    "contacts.js" => "text/javascript; charset=utf-8",
    "devices.js" => "text/javascript; charset=utf-8",
    "me.js" => "text/javascript; charset=utf-8",
    "synclog.js" => "text/javascript; charset=utf-8",
};

/// The file at `path`, if it is one of ours.
pub fn get(path: &str) -> Option<Reply> {
    let path = if path == "/" { "/index.html" } else { path };
    FILES
        .iter()
        .find(|(name, _, _)| *name == path)
        .map(|(_, content_type, bytes)| asset(content_type, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_ui_folder_is_embedded_and_nothing_else_is_served() {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let mut on_disk: Vec<String> = std::fs::read_dir(&folder)
            .expect("client-sdk/ui")
            .map(|entry| format!("/{}", entry.expect("entry").file_name().to_string_lossy()))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = FILES
            .iter()
            .map(|(name, _, _)| (*name).to_owned())
            .collect();
        embedded.sort();
        assert_eq!(
            on_disk, embedded,
            "add the file to FILES (or remove it from client-sdk/ui)"
        );

        assert!(get("/").is_some());
        assert!(get("/../Cargo.toml").is_none());
        assert!(get("/api/state").is_none());
    }
}
