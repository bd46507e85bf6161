//! Giving freed heap back to the kernel. glibc keeps what a large request
//! freed (parse trees, batch copies) mapped in its arenas, so the agent's RSS
//! would stay at the peak of its largest request; after such a request (and
//! after start-up, which reads every service twice) the free pages go back.

/// Returns free heap pages to the kernel (glibc `malloc_trim`); a no-op on
/// other C libraries.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes
    // no pointer and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Caps glibc's malloc arenas. By default every thread that allocates gets
/// its own arena (up to 8 per core), and the blocking threads the API uses
/// for map writes each keep freed memory in theirs; two arenas hold the
/// agent's steady state with far less left stranded.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called once at start,
    // before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
