package guestimage

// The guests differ from their shared base root only in a few unit files,
// added at assembly as a second cpio archive (see SystemdInitrd and
// UserInitrd):
//
//   - the user's guest (credvm image) stays up: credvm-report.service
//     prints and verifies the credentials that arrived on the console and
//     sends the result to the host (credvm guest report), and
//     root is logged in on the serial console (only the
//     VM's owner can reach it: it is connected to credvm, in their 0700
//     state directory);
//   - the test and demo guest reports through app.service (LoadCredential=
//     of the example machine's five credentials, printing name, size and
//     SHA-256 of each), verifies, then powers itself off, so that a test
//     or the demo ends with the guest.

// masked are units of the base root that only cost a slow guest time.
var masked = []string{
	"systemd-firstboot.service", "systemd-timesyncd.service", "apt-daily.timer",
	"apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer",
	"systemd-tmpfiles-clean.timer", "dpkg-db-backup.timer", "systemd-journal-flush.service",
}

// overlayFiles are the files the overlays put in /etc/systemd/system: the
// base root must not have them (an older build script wrote some there).
var overlayFiles = []string{
	"app.service", "credvm-report.service", "getty.target", "serial-getty@ttyS0.service",
	"getty@tty1.service", "multi-user.target.wants/app.service",
	"multi-user.target.wants/credvm-report.service", "serial-getty@ttyS0.service.d",
}

const userReportUnit = `[Unit]
Description=Show and verify the credentials credvm passed
After=systemd-udev-settle.service multi-user.target
Documentation=https://github.com/credvm/credvm

[Service]
Type=oneshot
RemainAfterExit=yes
# Names, sizes and digests only, never values; exit 1 names a credential
# that is missing or cut. The result goes to the host too (io.credvm.0):
# list and status show it, rotate waits for it.
ExecStart=/usr/local/bin/credvm guest report --source system
StandardOutput=tty
TTYPath=/dev/ttyS0

[Install]
WantedBy=multi-user.target
`

const autologin = `# credvm image: root is logged in on the serial console. Only the VM's
# owner reaches it: it is connected to credvm, in their state directory.
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 - $TERM
`

const testAppUnit = `[Unit]
Description=Example application reading its credentials
Before=credvm-report.service

[Service]
Type=oneshot
LoadCredential=API_KEY
LoadCredential=JWT_SECRET
LoadCredential=DB_PASSWORD
LoadCredential=DB_USER
LoadCredential=ENVIRONMENT
ExecStart=/bin/sh -c 'for f in "$CREDENTIALS_DIRECTORY"/*; do [ -e "$f" ] || continue; printf "app: %%s %%s %%s\\n" "$(basename "$f")" "$(wc -c < "$f")" "$(sha256sum < "$f" | cut -d" " -f1)"; done; echo "app: done"'
StandardOutput=tty
TTYPath=/dev/ttyS0

[Install]
WantedBy=multi-user.target
`

const testReportUnit = `[Unit]
Description=Report and verify the credentials credvm passed
After=app.service systemd-udev-settle.service

[Service]
Type=oneshot
ExecStart=/usr/local/bin/credvm guest report --source system
StandardOutput=tty
TTYPath=/dev/ttyS0
# Power off once the report is out, whatever it says (systemctl -ff needs
# no D-Bus). A graceful power-off (ACPI button, credvm stop) goes through
# systemd-logind, which needs the dbus package.
ExecStopPost=/bin/systemctl poweroff --force --force

[Install]
WantedBy=multi-user.target
`

// userOverlay adds the user's guest's units.
func userOverlay(c *cpio) {
	unitDirs(c)
	c.dir("etc/systemd/system/serial-getty@ttyS0.service.d")
	c.file("etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf", 0o644, []byte(autologin))
	c.file("etc/systemd/system/credvm-report.service", 0o644, []byte(userReportUnit))
	c.symlink("etc/systemd/system/multi-user.target.wants/credvm-report.service", "../credvm-report.service")
}

// testOverlay adds the test and demo guest's units, and masks the gettys
// (their output would interleave with the report on the one console).
func testOverlay(c *cpio) {
	unitDirs(c)
	c.file("etc/systemd/system/app.service", 0o644, []byte(testAppUnit))
	c.file("etc/systemd/system/credvm-report.service", 0o644, []byte(testReportUnit))
	c.symlink("etc/systemd/system/multi-user.target.wants/app.service", "../app.service")
	c.symlink("etc/systemd/system/multi-user.target.wants/credvm-report.service", "../credvm-report.service")
	for _, u := range []string{"getty.target", "serial-getty@ttyS0.service", "getty@tty1.service"} {
		c.symlink("etc/systemd/system/"+u, "/dev/null")
	}
}

// unitDirs are the overlays' parent directories (the kernel's unpacker
// creates none itself; an existing one is kept).
func unitDirs(c *cpio) {
	for _, d := range []string{"etc", "etc/systemd", "etc/systemd/system", "etc/systemd/system/multi-user.target.wants"} {
		c.dir(d)
	}
}
