//! The default balance mode, chosen by what the program is, when no
//! `--balance` is given:
//!
//! | the program | the mode |
//! |---|---|
//! | Node (node, npm, npx, a `#!` node script) | reuseport: the preload hands `app.listen()` herd's sockets |
//! | reads `LISTEN_FDS` (or fd 3: `fileno=3`, `fd://3`, `--fd 3`) | reuseport: it takes the sockets itself |
//! | binds `$PORT` (a Go program, Java, gunicorn, puma, rails, a script that reads `PORT`) | http with `--proxy-port`: each worker binds a private `PORT`, the master forwards each request |
//! | anything else | reuseport, as before, with a hint |
//!
//! Only what can be read without running the program is looked at: the
//! executable (an ELF file's sections), the script it runs, `sh -c` text
//! and the arguments. A non-HTTP server that binds `$PORT` needs
//! `--balance proxy --proxy-port` (nothing tells it from an HTTP one
//! before it runs).

use std::path::{Path, PathBuf};

use super::args::Cli;

/// What herd concluded about a program, and why (for the start-up line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Node: the preload serves it.
    Node,
    /// It reads `LISTEN_FDS` (or fd 3).
    ListenFds(String),
    /// It binds `$PORT` itself.
    Port(String),
    /// Nothing to go by.
    Unknown,
}

/// Text that says a program takes herd's sockets as they are passed.
const LISTEN_MARKERS: &[&str] = &[
    "LISTEN_FDS",
    "sd_listen_fds",
    "listen_fds",
    "fileno=3",
    "fd://3",
    "--fd 3",
    "--fd=3",
    "fromfd(3",
];

/// Text that says a script reads PORT.
const PORT_MARKERS: &[&str] = &[
    "$PORT",
    "${PORT",
    "\"PORT\"",
    "'PORT'",
    "env.PORT",
    "ENV['PORT'",
    "ENV[\"PORT\"",
    "getenv(\"PORT",
    "getenv('PORT",
];

/// Servers and runtimes that bind `$PORT` when told nothing else
/// (gunicorn, puma and rails read it themselves; Java and the rest run
/// apps written for platforms that set it).
const PORT_PROGRAMS: &[&str] = &[
    "java",
    "gunicorn",
    "puma",
    "rails",
    "rackup",
    "hypercorn",
    "daphne",
    "granian",
    "bun",
    "deno",
    "dotnet",
    "waitress-serve",
];

/// Interpreters whose script is the program to look at.
const INTERPRETERS: &[&str] = &["python", "ruby", "php", "perl", "bash", "sh", "dash", "zsh"];

/// What `cli.command` runs.
pub(crate) fn classify(cli: &Cli, runs_node: bool) -> Kind {
    if runs_node {
        return Kind::Node;
    }
    let Some((program, args)) = cli.command.split_first() else {
        return Kind::Unknown;
    };
    let cwd = cli.cwd.clone().unwrap_or_else(|| PathBuf::from("."));
    let name = Path::new(program)
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let joined = args.join(" ");
    if let Some(m) = LISTEN_MARKERS.iter().find(|m| joined.contains(*m)) {
        return Kind::ListenFds(format!("its arguments pass fd 3 (`{m}`)"));
    }
    // `sh -c '... $PORT ...'`: the script is the argument.
    if INTERPRETERS.iter().any(|i| is_named(&name, i)) {
        if let Some(at) = args.iter().position(|a| a == "-c") {
            if let Some(text) = args.get(at + 1) {
                return from_text(text, &format!("its `{name} -c` script"), false);
            }
        }
        if let Some(script) = script_arg(args, &cwd) {
            let text = read_head(&script, 1 << 20);
            let shown = script.display().to_string();
            return from_text(&String::from_utf8_lossy(&text), &shown, false);
        }
        return Kind::Unknown;
    }
    if PORT_PROGRAMS.iter().any(|p| is_named(&name, p)) {
        return Kind::Port(format!("{name} binds $PORT"));
    }
    let Some(path) = resolve(program, &cwd) else {
        return Kind::Unknown;
    };
    let head = read_head(&path, 4096);
    if head.starts_with(b"#!") {
        // A script run by its `#!` line.
        let text = read_head(&path, 1 << 20);
        let text = String::from_utf8_lossy(&text);
        let line = text.lines().next().unwrap_or_default().to_owned();
        let by_port_program = PORT_PROGRAMS.iter().any(|p| {
            line.split_whitespace()
                .any(|w| is_named(w.rsplit('/').next().unwrap_or(w), p))
        });
        return from_text(&text, &path.display().to_string(), by_port_program);
    }
    if let Some(go) = go_rodata(&path) {
        return match LISTEN_MARKERS.iter().find(|m| contains(&go, m.as_bytes())) {
            Some(m) => Kind::ListenFds(format!("{program} is a Go program that reads `{m}`")),
            None => Kind::Port(format!(
                "{program} is a Go program that does not read LISTEN_FDS, so it binds $PORT"
            )),
        };
    }
    Kind::Unknown
}

fn from_text(text: &str, what: &str, port_program: bool) -> Kind {
    if let Some(m) = LISTEN_MARKERS.iter().find(|m| text.contains(*m)) {
        return Kind::ListenFds(format!("{what} reads `{m}`"));
    }
    if let Some(m) = PORT_MARKERS.iter().find(|m| text.contains(*m)) {
        return Kind::Port(format!("{what} reads `{m}`"));
    }
    if port_program {
        return Kind::Port(format!("{what} runs a server that binds $PORT"));
    }
    Kind::Unknown
}

/// `python3`, `python3.12`, `ruby3.1`, `java`...
fn is_named(name: &str, base: &str) -> bool {
    name.strip_prefix(base)
        .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// The first argument that is a file (the script), skipping options.
fn script_arg(args: &[String], cwd: &Path) -> Option<PathBuf> {
    args.iter()
        .filter(|a| !a.starts_with('-'))
        .map(|a| cwd.join(a))
        .find(|p| p.is_file())
}

/// The program as exec would find it.
fn resolve(program: &str, cwd: &Path) -> Option<PathBuf> {
    if program.contains('/') {
        let p = cwd.join(program);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

fn read_head(path: &Path, max: u64) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(max).read_to_end(&mut out);
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut i = 0;
    while let Some(at) = hay[i..].iter().position(|&b| b == first) {
        let start = i + at + 1;
        if hay[start..].starts_with(rest) {
            return true;
        }
        i = start;
    }
    false
}

/// A Go executable's read-only data (where its string constants are), or
/// None when the file is not a 64-bit little-endian ELF built by Go.
fn go_rodata(path: &Path) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let mut eh = [0u8; 64];
    f.read_exact(&mut eh).ok()?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let shoff = u64_at(&eh, 0x28);
    let shentsize = u16_at(&eh, 0x3A) as usize;
    let shnum = u16_at(&eh, 0x3C) as usize;
    let shstrndx = u16_at(&eh, 0x3E) as usize;
    if shentsize < 64 || shnum == 0 || shnum > 4096 || shstrndx >= shnum {
        return None;
    }
    let mut sh = vec![0u8; shentsize * shnum];
    f.seek(SeekFrom::Start(shoff)).ok()?;
    f.read_exact(&mut sh).ok()?;
    let section = |i: usize| {
        let s = &sh[i * shentsize..(i + 1) * shentsize];
        (u32_at(s, 0) as usize, u64_at(s, 0x18), u64_at(s, 0x20))
    };
    let (_, names_off, names_size) = section(shstrndx);
    if names_size > 1 << 20 {
        return None;
    }
    let mut names = vec![0u8; names_size as usize];
    f.seek(SeekFrom::Start(names_off)).ok()?;
    f.read_exact(&mut names).ok()?;
    let name_of = |at: usize| {
        let rest = names.get(at..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        rest[..end].to_vec()
    };
    let mut is_go = false;
    let mut rodata = None;
    for i in 0..shnum {
        let (name, off, size) = section(i);
        match name_of(name).as_slice() {
            b".go.buildinfo" | b".note.go.buildid" => is_go = true,
            b".rodata" => rodata = Some((off, size)),
            _ => {}
        }
    }
    if !is_go {
        return None;
    }
    let (off, size) = rodata?;
    let mut data = vec![0u8; size.min(64 << 20) as usize];
    f.seek(SeekFrom::Start(off)).ok()?;
    f.read_exact(&mut data).ok()?;
    Some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(command: &[&str]) -> Cli {
        let mut c = super::super::config::defaults();
        c.command = command.iter().map(|s| s.to_string()).collect();
        c
    }

    #[test]
    fn scripts_and_arguments_say_how_a_program_listens() {
        let dir = std::env::temp_dir().join(format!("herd-detect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = dir.join("port_app.py");
        std::fs::write(&port, "import os\nport = int(os.environ['PORT'])\n").unwrap();
        let fds = dir.join("fd_app.py");
        std::fs::write(&fds, "import socket\ns = socket.socket(fileno=3)\n").unwrap();
        let plain = dir.join("plain.py");
        std::fs::write(&plain, "print('hi')\n").unwrap();
        let p = |f: &Path| f.display().to_string();
        assert!(matches!(
            classify(&cli(&["python3", &p(&port)]), false),
            Kind::Port(_)
        ));
        assert!(matches!(
            classify(&cli(&["python3", "-u", &p(&fds)]), false),
            Kind::ListenFds(_)
        ));
        assert_eq!(
            classify(&cli(&["python3", &p(&plain)]), false),
            Kind::Unknown
        );
        assert!(matches!(
            classify(
                &cli(&["sh", "-c", "exec uvicorn app:app --port $PORT"]),
                false
            ),
            Kind::Port(_)
        ));
        assert!(matches!(
            classify(
                &cli(&["sh", "-c", "exec gunicorn -b fd://3 app:app"]),
                false
            ),
            Kind::ListenFds(_)
        ));
        assert_eq!(classify(&cli(&["sleep", "30"]), false), Kind::Unknown);
        assert_eq!(classify(&cli(&["sleep", "30"]), true), Kind::Node);
        assert!(matches!(
            classify(&cli(&["java", "-jar", "app.jar"]), false),
            Kind::Port(_)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_rust_worker_that_reads_listen_fds_is_not_a_go_program() {
        // This test's own executable: an ELF file, not built by Go.
        let me = std::env::current_exe().unwrap();
        assert!(go_rodata(&me).is_none());
        assert!(contains(b"xxLISTEN_FDSyy", b"LISTEN_FDS"));
        assert!(!contains(b"LISTEN_FD", b"LISTEN_FDS"));
    }
}
