//! The model through the kernel: real syscalls on a mounted [`Disk`], then a cut.

use std::fs::File;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;

use tribune_powercut::Disk;

fn mountpoint(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tribune-powercut-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

#[test]
fn what_survives_a_cut_through_the_kernel() {
    if !tribune_powercut::available_or_skip("what_survives_a_cut_through_the_kernel") {
        return;
    }
    let at = mountpoint("kernel");
    let disk = Disk::new();
    let m = disk.mount(&at).unwrap();

    // durable: written, fsynced, named by a synced directory
    std::fs::create_dir(at.join("d")).unwrap();
    let mut f = File::create(at.join("d/kept")).unwrap();
    f.write_all(b"kept").unwrap();
    f.sync_all().unwrap();
    sync_dir(&at.join("d"));
    sync_dir(&at);
    // fdatasync counts as well, for the contents; later unsynced bytes do not
    let f2 = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(at.join("d/journal"))
        .unwrap();
    f2.set_len(1 << 20).unwrap();
    f2.write_all_at(b"one", 0).unwrap();
    f2.sync_data().unwrap();
    std::fs::write(at.join("d/back"), b"b").unwrap();
    File::open(at.join("d/back")).unwrap().sync_all().unwrap();
    sync_dir(&at.join("d"));
    f2.write_all_at(b"two", 3).unwrap();
    // not durable: a new file without any sync, a synced file whose name is not,
    // an unsynced rename and an unsynced unlink
    std::fs::write(at.join("d/never"), b"never").unwrap();
    let g = File::create(at.join("unnamed")).unwrap();
    g.sync_all().unwrap();
    std::fs::rename(at.join("d/kept"), at.join("d/moved")).unwrap();
    std::fs::write(at.join("d/gone"), b"x").unwrap();
    std::fs::remove_file(at.join("d/back")).unwrap();
    // ... and the page cache shows all of it
    assert_eq!(std::fs::read(at.join("d/never")).unwrap(), b"never");
    let mut j = vec![0; 6];
    f2.read_exact_at(&mut j, 0).unwrap();
    assert_eq!(j, b"onetwo");
    drop((f, f2, g));

    disk.freeze();
    assert_eq!(
        File::open(at.join("d/moved"))
            .unwrap()
            .sync_all()
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EIO),
        "no sync after the cut"
    );
    m.unmount().unwrap();
    assert!(!at.join("d").exists(), "unmounted");
    let report = disk.cut();
    let m = disk.mount(&at).unwrap();

    let mut names: Vec<String> = std::fs::read_dir(at.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["back", "journal", "kept"]);
    assert_eq!(std::fs::read(at.join("d/back")).unwrap(), b"b");
    assert_eq!(std::fs::read(at.join("d/kept")).unwrap(), b"kept");
    let j = std::fs::read(at.join("d/journal")).unwrap();
    assert_eq!((j.len(), &j[..6]), (1 << 20, &b"one\0\0\0"[..]));
    assert!(!at.join("unnamed").exists());
    assert!(report.discarded_anything());
    assert_eq!(report.bytes_discarded, 3 + 5 + 1, "{report:?}");
    assert_eq!(report.inodes_lost, 3, "never, unnamed, gone: {report:?}");
    assert_eq!(report.inodes_resurrected, 1, "back: {report:?}");
    assert!(
        disk.stats().file_syncs >= 3 && disk.stats().dir_syncs >= 3,
        "{:?}",
        disk.stats()
    );
    m.unmount().unwrap();
    std::fs::remove_dir(&at).unwrap();
}

#[test]
fn a_panicking_test_still_unmounts() {
    if !tribune_powercut::available_or_skip("a_panicking_test_still_unmounts") {
        return;
    }
    let at = mountpoint("panic");
    let disk = Disk::new();
    let at2 = at.clone();
    let r = std::thread::spawn(move || {
        let _m = disk.mount(&at2).unwrap();
        std::fs::write(at2.join("open-while-panicking"), b"x").unwrap();
        panic!("on purpose");
    })
    .join();
    assert!(r.is_err());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(at.to_str().unwrap()),
        "still mounted:\n{mounts}"
    );
    std::fs::remove_dir(&at).unwrap();
}
