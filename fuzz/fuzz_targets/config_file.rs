//! Arbitrary bytes as the configuration file, loaded and validated as `vigil serve --config`
//! does. Must never panic; what loads validates. The check is shared with the stable seeded
//! run in CI: `vigil::fuzz::config_file`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vigil-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    });
    vigil::fuzz::config_file(dir, data);
});
