//! `mcpvisor validate`: checks workspace files without a daemon.

use std::path::PathBuf;

use super::exit;

/// Prints every error of every file; returns the exit code.
pub fn validate(paths: &[PathBuf]) -> i32 {
    let paths = if paths.is_empty() { vec![PathBuf::from("./workspaces")] } else { paths.to_vec() };
    let mut n_files = 0;
    let mut n_invalid = 0;
    for path in paths {
        let files = if path.is_dir() {
            match crate::config::load_dir(&path) {
                Ok(files) => files,
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    n_invalid += 1;
                    continue;
                }
            }
        } else {
            vec![crate::config::load_file(&path)]
        };
        for file in files {
            n_files += 1;
            if let Err(error) = &file.config {
                n_invalid += 1;
                println!("{error}");
            }
        }
    }
    if n_invalid == 0 {
        println!("{n_files} workspace file(s) valid");
        exit::OK
    } else {
        println!("{n_invalid} of {n_files} invalid");
        exit::INVALID
    }
}
