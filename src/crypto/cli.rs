//! `vigil keys ...`: manage the field-encryption key ring named by the configuration
//! (`[store] keys_file`, `VIGIL_KEYS_FILE`). Never prints key material.

use anyhow::Context;

use crate::config::{Config, ServeArgs};

/// `vigil keys <action>`
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: KeysAction,
    /// Configuration (only the key locations are used).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Key ring actions.
#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum KeysAction {
    /// Add a new active key; older keys stay to decrypt what they sealed.
    Rotate,
    /// List key ids and which one is active.
    List,
}

/// Run a `keys` action and print what it did.
pub fn run(args: &KeysArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.serve)?;
    let path = &config.store.keys_file;
    match args.action {
        KeysAction::Rotate => {
            let id = super::rotate(path).with_context(|| format!("rotating {}", path.display()))?;
            println!("key {id} added to {} and active for new writes; restart vigil to use it", path.display());
        }
        KeysAction::List => {
            let ring = super::KeyRing::load_or_create(path)?;
            for id in ring.key_ids() {
                let marker = if id == ring.active_id() { " (active)" } else { "" };
                println!("{id}{marker}");
            }
        }
    }
    Ok(())
}
