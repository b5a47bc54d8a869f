pub fn status(
    _d: &std::ffi::OsStr,
    _x: Option<&std::ffi::OsStr>,
    _j: bool,
) -> anyhow::Result<std::process::ExitCode> {
    todo!()
}
