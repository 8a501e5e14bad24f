//! This process's open-file limit, which servers and `hold` raise: a
//! thousand connections need a thousand descriptors, and the usual soft
//! limit is 1024.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, best effort: a server
/// that cannot raise it still serves what the old limit allows.
pub(crate) fn raise_to_hard_limit() {
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Raises the soft `RLIMIT_NOFILE` to at least `wanted`, past the hard
/// limit if this process may (root), and returns the soft limit now in
/// force.
pub(crate) fn raise_to(wanted: u64) -> Result<u64, String> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|error| format!("cannot read RLIMIT_NOFILE: {error}"))?;
    if soft >= wanted {
        return Ok(soft);
    }
    if wanted <= hard {
        setrlimit(Resource::RLIMIT_NOFILE, wanted, hard)
            .map_err(|error| format!("cannot raise RLIMIT_NOFILE to {wanted}: {error}"))?;
        return Ok(wanted);
    }
    // Past the hard limit only with CAP_SYS_RESOURCE.
    setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).map_err(|error| {
        format!("cannot raise RLIMIT_NOFILE to {wanted} (soft {soft}, hard {hard}): {error}")
    })?;
    Ok(wanted)
}
