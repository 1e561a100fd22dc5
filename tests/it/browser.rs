//! The console in real headless Chromium: an HL7 message raises an alert that appears on the
//! board, a click acknowledges it, a second session sees it acknowledged, and after a server
//! restart it is still acknowledged. Screenshots land in target/browser-shots/.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

fn node_script(phase: &str, proc: &Proc, token: &str, mrn: &str, shots: &Path) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core missing: run `npm ci --prefix tests/browser` (tests/run does) and install Debian's chromium"
    );
    let out = Command::new("node")
        .arg(dir.join("console.mjs"))
        .arg(phase)
        .env("VIGIL_HTTP", proc.http.to_string())
        .env("VIGIL_MLLP", proc.mllp.to_string())
        .env("VIGIL_TOKEN", token)
        .env("VIGIL_MRN", mrn)
        .env("VIGIL_SHOTS", shots)
        .output()
        .expect("node must be installed to run the browser test");
    assert!(
        out.status.success(),
        "browser phase {phase} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_acknowledges_and_keeps_acknowledged_across_restart() {
    let dir = tempdir("browser");
    let data = dir.to_str().unwrap().to_string();
    let rules = rules_dir();
    let args = vigil_args("serve", &data, rules.to_str().unwrap(), &[]);
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-shots");
    let mrn = format!("MRN-BR-{}", rand::random::<u32>());
    let token = vigil_token(&dir, "ICU");

    let proc = spawn_vigil(&args);
    let (p, t, m, s) = (&proc, token.clone(), mrn.clone(), shots.clone());
    tokio::task::block_in_place(|| node_script("alert-and-ack", p, &t, &m, &s));
    // Issue 16's census: a bed with no alert has a tile, with its NEWS2 or "no score"; a
    // discharged patient's tile goes away.
    tokio::task::block_in_place(|| node_script("census", p, &t, &m, &s));
    assert!(shots.join("board-census.png").exists());
    drop(proc);

    let proc = spawn_vigil(&args);
    tokio::task::block_in_place(|| node_script("after-restart", &proc, &token, &mrn, &shots));
    assert!(shots.join("board-acknowledged.png").exists());
    assert!(shots.join("patient-view.png").exists());
    assert!(shots.join("board-after-restart.png").exists());
    assert!(shots.join("board-census-after-restart.png").exists());
}

/// The console under `vigil demo` with 40 deteriorating beds on two units (issue 11): an
/// expired token shows the sign-in error; rows show unit, room, bed and MRN; the title counts
/// unacknowledged alerts; ten acknowledge clicks held 180 ms all register while frames stream
/// in; keyboard focus survives them; a dead server greys the rows under a banner in view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_under_load_acknowledges_every_held_click_and_refuses_an_expired_token() {
    let dir = tempdir("browser-load");
    let data = dir.to_str().unwrap().to_string();
    let rules = rules_dir();
    let proc = spawn_vigil(&vigil_args(
        "demo",
        &data,
        rules.to_str().unwrap(),
        &[
            "--beds",
            "40",
            "--unit",
            "ICU",
            "--unit",
            "5W",
            "--deteriorating",
            "40",
            "--interval-secs",
            "1",
            "--deterioration-secs",
            "20",
        ],
    ));
    let token = vigil_token(&dir, "*");
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["token", "--role", "rrt", "--unit", "*", "--hours=-1", "--data-dir", &data])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expired = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-shots");
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    // Issue 16 first, on the same ward: the unit board with both units and 40 beds on one
    // screen, filters, bundling, keyboard-only acknowledge, silences (on the page's injected
    // clock), the phone layout, and the notification counts with and without silences.
    let board = tokio::task::block_in_place(|| {
        Command::new("node")
            .arg(browser_dir.join("console.mjs"))
            .arg("board")
            .env("VIGIL_HTTP", proc.http.to_string())
            .env("VIGIL_MLLP", proc.mllp.to_string())
            .env("VIGIL_TOKEN", &token)
            .env("VIGIL_SHOTS", &shots)
            .env("VIGIL_MEASURE_SECS", "30")
            .output()
            .expect("node must be installed to run the browser test")
    });
    let stdout = String::from_utf8_lossy(&board.stdout);
    println!("{stdout}");
    assert!(
        board.status.success(),
        "browser board phase failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&board.stderr)
    );
    for line in ["acknowledged with one click", "keyboard only:", "ended after 15 min of injected time", "phone:"] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    for shot in
        ["board-two-units.png", "patient-bundle.png", "phone-board.png", "phone-patient.png", "notifications.json"]
    {
        assert!(shots.join(shot).exists(), "{shot}");
    }
    let out = tokio::task::block_in_place(|| {
        Command::new("node")
            .arg(browser_dir.join("console.mjs"))
            .arg("load")
            .env("VIGIL_HTTP", proc.http.to_string())
            .env("VIGIL_MLLP", proc.mllp.to_string())
            .env("VIGIL_TOKEN", &token)
            .env("VIGIL_EXPIRED_TOKEN", &expired)
            .env("VIGIL_PID", proc.child.id().to_string())
            .env("VIGIL_SHOTS", &shots)
            .output()
            .expect("node must be installed to run the browser test")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "browser load phase failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("10 of 10 held clicks acknowledged"), "{stdout}");
    for shot in ["expired-token.png", "board-under-load.png", "board-disconnected.png"] {
        assert!(shots.join(shot).exists(), "{shot}");
    }
}

/// Issue 16: sixty beds of one unit on one 1920x1080 desktop screen without scrolling, nearly
/// all of them alerting (`vigil demo`, 60 deteriorating beds on ICU). The screenshot is
/// committed as docs/console/board-60-beds.png.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_board_fits_sixty_beds_of_one_unit_on_a_desktop_screen() {
    let dir = tempdir("browser-sixty");
    let data = dir.to_str().unwrap().to_string();
    let rules = rules_dir();
    let proc = spawn_vigil(&vigil_args(
        "demo",
        &data,
        rules.to_str().unwrap(),
        &[
            "--beds",
            "60",
            "--unit",
            "ICU",
            "--deteriorating",
            "60",
            "--interval-secs",
            "1",
            "--deterioration-secs",
            "20",
        ],
    ));
    let token = vigil_token(&dir, "*");
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-shots");
    let out = tokio::task::block_in_place(|| {
        Command::new("node")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/console.mjs"))
            .arg("sixty")
            .env("VIGIL_HTTP", proc.http.to_string())
            .env("VIGIL_MLLP", proc.mllp.to_string())
            .env("VIGIL_TOKEN", &token)
            .env("VIGIL_SHOTS", &shots)
            .output()
            .expect("node must be installed to run the browser test")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "browser sixty phase failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("without scrolling"), "{stdout}");
    assert!(shots.join("board-60-beds.png").exists());
}

/// Issue 16: a charge nurse assigns beds in the console; an alert on one of them notifies the
/// assigned nurse first, then escalates to the charge nurse and the rapid response team, each
/// step on its own timer, shown on the tile and the alert with the receipts; the console says
/// when the browser blocks sound and unblocks it with a click; mute lasts until the shift ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_assignment_then_escalation_along_the_chain() {
    use vigil::alerts::escalation::ChainStep;
    use vigil::auth::Role;
    let dir = tempdir("browser-chain");
    let mut config = config_qsofa_only(&dir);
    let step = |label: &str, role: &str| ChainStep {
        label: label.into(),
        units: Vec::new(),
        roles: vec![role.into()],
        wait: Some(time::Duration::seconds(4)),
    };
    config.escalation.chain = vec![step("charge nurse", "charge"), step("rapid response team", "rrt")];
    config.escalation.period = std::time::Duration::from_millis(200);
    let server = vigil::app::start(&config).await.unwrap();
    let issue = |sub: &str, role: Role| server.auth.issue(sub, role, vec!["ICU".into()], time::Duration::hours(1));
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-shots");
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let out = tokio::task::block_in_place(|| {
        Command::new("node")
            .arg(browser_dir.join("console.mjs"))
            .arg("chain")
            .env("VIGIL_HTTP", server.http_addr.to_string())
            .env("VIGIL_MLLP", server.mllp_addr.to_string())
            .env("VIGIL_TOKEN", issue("rrt-1", Role::Rrt))
            .env("VIGIL_CHARGE_TOKEN", issue("charge-1", Role::Charge))
            .env("VIGIL_NURSE_TOKEN", issue("nurse-4", Role::Nurse))
            .env("VIGIL_MRN", format!("MRN-CH-{}", rand::random::<u32>()))
            .env("VIGIL_SHOTS", &shots)
            .output()
            .expect("node must be installed to run the browser test")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "browser chain phase failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("charge nurse at L1, RRT at L2"), "{stdout}");
    assert!(stdout.contains("sound: blocked banner shown"), "{stdout}");
    assert!(stdout.contains("severity: colour, shape and text"), "{stdout}");
    assert!(
        stdout.contains("desktop notifications: asked on a click; threshold, mute and silence respected"),
        "{stdout}"
    );
    server.shutdown().await;
}
