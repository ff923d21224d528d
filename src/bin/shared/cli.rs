//! How both binaries start: `--help` prints every variable of the settings table and exits 0; a
//! stray argument, or a variable with a malformed value, is reported and exits 2. Owns argv and
//! exit codes only: reading and checking the settings is the library's.

use std::process::ExitCode;

use camera_logs::Settings;

pub fn config_from_env<C: Settings>(program: &str, about: &str) -> Result<C, ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{program}: {about}\n\nUsage: {program} [--help]\n\nEnvironment variables:");
        for s in C::TABLE {
            let default = s.default.unwrap_or("(unset)");
            println!("  {:<24} default {default:<24} {}", s.name, s.help);
        }
        return Err(ExitCode::SUCCESS);
    }
    if let Some(arg) = args.first() {
        eprintln!("{program}: unexpected argument {arg:?}; configuration comes from the environment (see --help)");
        return Err(ExitCode::from(2));
    }
    C::from_env().map_err(|e| {
        eprintln!("{program}: {e}");
        ExitCode::from(2)
    })
}

/// The exit status of a run that started (outer `Ok`) and then ended, each failure named.
pub fn exit_status(program: &str, run: std::io::Result<std::io::Result<()>>) -> ExitCode {
    // The library's lines go through a queue: the last ones before the exit are written first.
    camera_logs::flush_log();
    match run {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("{program}: stopped: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{program}: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}
