//! Exits 0 if a FUSE filesystem can be mounted here (ci/test asks, to require the
//! power-cut test where it can run), 1 with the reason if not.

fn main() {
    match tribune_powercut::probe() {
        Ok(()) => println!("FUSE mounts work here"),
        Err(why) => {
            println!("no FUSE mounts here: {why}");
            std::process::exit(1);
        }
    }
}
