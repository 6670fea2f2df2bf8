//go:build linux

package integration_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A sandbox is a real systemd, booted as PID 1 of new pid, mount, uts, ipc
// and cgroup namespaces, with nothing of the host's own units in sight.
// Tests write unit files, then drive it with systemctl through nsenter.
// It shares the host's network, root file system and /tmp, so that
// tests reach the services on loopback and the services run the binaries
// the tests built.
//
// Booting systemd in namespaces changes the host unless it is fenced in;
// each guard below answers something a bare `unshare ... systemd` did:
//
//   - its cgroups: a private cgroup2 subtree under this process's own
//     cgroup, entered at clone time (CLONE_INTO_CGROUP) and made the root
//     of the new cgroup namespace, then mounted alone on /sys/fs/cgroup.
//     systemd sees a pure cgroup2 system and never touches the host's
//     hierarchies (on a hybrid host it would create cgroups in every v1
//     hierarchy and remount the host's cgroup tmpfs read-only);
//   - sysctls: /proc/sys is read-only (systemd raises fs.file-max, which
//     is not namespaced), and so is /sys (a per-mount flag only);
//   - mounts: everything is made private first, so that nothing
//     propagates back, and mounts are made with mount(2) directly, so no
//     /run/mount/utab appears on the host's /run;
//   - files: /run and /var/log/journal are private tmpfs, /etc and /var
//     copy-on-write overlays whose upper layers live in the state
//     directory; machine id and hostname are private;
//   - the kernel log and console: /dev/kmsg is /dev/null, /dev/console a
//     pty whose output goes to the state directory's console.log;
//   - units: SYSTEMD_UNIT_PATH holds only the test's unit directory and a
//     few stub targets, and generators are off;
//   - lifetime: PID 1 dies with this process (parent-death signal), and
//     teardown powers off, falls back to SIGKILL (which ends the whole
//     pid namespace), removes the cgroup subtree and the state directory.
type sandbox struct {
	t     testing.TB
	dir   string // state directory
	units string // unit directory, first on the unit path

	cgroup  string        // the private cgroup2 subtree, on the host
	pid     int           // systemd's host pid; the harness's reaper reaps it
	console *os.File      // pty master, read into console.log
	slave   *os.File      // held open, so that reads never fail while systemd has it closed
	logDone chan struct{} // closed once the console is drained
}

// The test binary doubles as the sandbox's first process: with
// envSandboxInit set it fences in the new namespaces and execs systemd.
// It runs from init, before TestMain, so that it needs nothing from the
// test harness.
const (
	envSandboxInit    = "HANDOFF_SANDBOX_INIT"    // the state directory
	envSandboxConsole = "HANDOFF_SANDBOX_CONSOLE" // the pty to make /dev/console
	envSandboxSystemd = "HANDOFF_SANDBOX_SYSTEMD" // the systemd binary
)

func init() {
	if dir := os.Getenv(envSandboxInit); dir != "" {
		err := sandboxInit(dir, os.Getenv(envSandboxConsole), os.Getenv(envSandboxSystemd))
		fmt.Fprintln(os.Stderr, "sandbox init:", err) // it only returns on failure
		os.Exit(1)
	}
}

// sigPoweroff is SIGRTMIN+4 (the C library's SIGRTMIN is 34), which tells
// systemd to start poweroff.target.
const sigPoweroff = syscall.Signal(34 + 4)

// sandboxTimeout bounds booting, each systemctl call, and the poweroff.
const sandboxTimeout = 30 * time.Second

// startSandbox boots a sandbox, torn down when t's cleanups run. It skips
// t where the machine cannot do it, saying why.
func startSandbox(t testing.TB) *sandbox {
	t.Helper()
	systemd, cg2 := sandboxSupported(t)
	dir, err := os.MkdirTemp("", "sdsandbox")
	if err != nil {
		t.Fatal(err)
	}
	s := &sandbox{t: t, dir: dir, units: filepath.Join(dir, "units"), logDone: make(chan struct{})}
	for _, d := range []string{s.units, filepath.Join(dir, "base"), filepath.Join(dir, "empty")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			os.RemoveAll(dir)
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil { // services run as other users too
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	for name, text := range sandboxBaseUnits {
		if err := os.WriteFile(filepath.Join(dir, "base", name), []byte(text), 0o644); err != nil {
			os.RemoveAll(dir)
			t.Fatal(err)
		}
	}
	s.cgroup = filepath.Join(cg2, "handoff-"+filepath.Base(dir))
	if err := os.Mkdir(s.cgroup, 0o755); err != nil {
		os.RemoveAll(dir)
		t.Skipf("systemd sandbox: cannot create a cgroup2 subtree: %v", err)
	}
	t.Cleanup(s.down)
	if err := s.boot(systemd); err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSYS) {
			t.Skipf("systemd sandbox: this machine does not let us create namespaces: %v", err)
		}
		t.Fatalf("systemd sandbox: %v", err)
	}
	if err := s.waitBooted(); err != nil {
		t.Fatalf("systemd sandbox did not boot: %v\nconsole:\n%s", err, s.consoleTail())
	}
	return s
}

// sandboxSupported returns the systemd binary and the host's cgroup2
// subtree of this process, or skips t with the reason.
func sandboxSupported(t testing.TB) (systemd, cgroup string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("systemd sandbox: needs root (mounts, namespaces, cgroups)")
	}
	for _, c := range []string{"/lib/systemd/systemd", "/usr/lib/systemd/systemd"} {
		if fi, err := os.Stat(c); err == nil && fi.Mode()&0o111 != 0 {
			systemd = c
			break
		}
	}
	if systemd == "" {
		t.Skip("systemd sandbox: systemd is not installed")
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skip("systemd sandbox: nsenter (util-linux) is not installed")
	}
	if fs, err := os.ReadFile("/proc/filesystems"); err != nil || !bytes.Contains(fs, []byte("\toverlay\n")) {
		t.Skip("systemd sandbox: overlayfs is not available (needed to keep /etc and /var of the host unchanged)")
	}
	mnt := cgroup2Mount()
	if mnt == "" {
		t.Skip("systemd sandbox: no cgroup2 hierarchy is mounted")
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Skipf("systemd sandbox: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if own, ok := strings.CutPrefix(line, "0::"); ok {
			return systemd, filepath.Join(mnt, own)
		}
	}
	t.Skip("systemd sandbox: this process is in no cgroup2 group")
	return "", ""
}

// cgroup2Mount is where the host mounts its cgroup2 hierarchy: the
// (unescaped) fifth field of the first cgroup2 line of mountinfo.
func cgroup2Mount() string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		_, post, ok := strings.Cut(line, " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		if f := strings.Fields(line); len(f) > 4 && !strings.Contains(f[4], `\`) {
			return f[4]
		}
	}
	return ""
}

// boot starts systemd as PID 1 of new namespaces, in the private cgroup.
func (s *sandbox) boot(systemd string) error {
	logFile, err := os.Create(filepath.Join(s.dir, "console.log"))
	if err != nil {
		return err
	}
	master, slave, err := openPTY()
	if err != nil {
		logFile.Close()
		return fmt.Errorf("console pty: %w", err)
	}
	s.console, s.slave = master, slave
	go func() { // drain the console, or whoever writes to it blocks
		defer close(s.logDone)
		defer logFile.Close()
		io.Copy(logFile, master) // until EIO: down closed the last slave
	}()
	cg, err := os.Open(s.cgroup)
	if err != nil {
		return err
	}
	defer cg.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := &exec.Cmd{
		Path: self,
		Args: []string{"sandbox-init"},
		Env: []string{envSandboxInit + "=" + s.dir, envSandboxConsole + "=" + slave.Name(),
			envSandboxSystemd + "=" + systemd},
		Stdin: slave, Stdout: slave, Stderr: slave,
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWCGROUP,
			// Born in the private cgroup, which thereby becomes the
			// root of its cgroup namespace.
			UseCgroupFD: true,
			CgroupFD:    int(cg.Fd()),
			Setsid:      true,
			Pdeathsig:   syscall.SIGKILL,
		},
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	s.pid = cmd.Process.Pid
	reaper.Watch(s.pid)
	cmd.Process.Release()
	return nil
}

// exited reports whether systemd has exited (and been reaped).
func (s *sandbox) exited() bool {
	_, gone := reaper.Wait(s.pid, 0)
	return gone
}

// waitBooted waits for the manager's private socket, then for the boot
// to finish.
func (s *sandbox) waitBooted() error {
	deadline := time.Now().Add(sandboxTimeout)
	private := fmt.Sprintf("/proc/%d/root/run/systemd/private", s.pid)
	for {
		if _, err := os.Stat(private); err == nil {
			break
		}
		if s.exited() {
			return errors.New("systemd exited")
		}
		if time.Now().After(deadline) {
			return errors.New("no /run/systemd/private after " + sandboxTimeout.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	out, err := s.run("systemctl", "is-system-running", "--wait")
	state := strings.TrimSpace(out)
	if state == "running" || state == "degraded" {
		return nil
	}
	return fmt.Errorf("system state %q: %v", state, err)
}

// run runs a command inside the sandbox and returns its standard output.
func (s *sandbox) run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), sandboxTimeout)
	defer cancel()
	ns := []string{"-t", fmt.Sprint(s.pid), "-m", "-u", "-i", "-p", "-C", "--wd=/", "--",
		"env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER=cat", "SYSTEMD_COLORS=0", name}
	cmd := exec.CommandContext(ctx, "nsenter", append(ns, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), err
}

// systemctl runs systemctl inside and fails the test if it fails.
func (s *sandbox) systemctl(args ...string) string {
	s.t.Helper()
	out, err := s.run("systemctl", args...)
	if err != nil {
		s.t.Fatalf("%v", err)
	}
	return out
}

// writeUnit puts a unit file in the unit directory (then daemon-reload,
// or start a unit systemd has not loaded yet).
func (s *sandbox) writeUnit(name, text string) {
	s.t.Helper()
	if err := os.WriteFile(filepath.Join(s.units, name), []byte(text), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// unitProps are properties of a unit, as systemctl show prints them.
type unitProps map[string]string

// show returns the named properties of unit.
func (s *sandbox) show(unit string, props ...string) unitProps {
	s.t.Helper()
	out := s.systemctl("show", "-p", strings.Join(props, ","), unit)
	p := unitProps{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			p[k] = v
		}
	}
	return p
}

// waitUnit polls the properties of unit until cond holds, and returns
// them.
func (s *sandbox) waitUnit(unit, what string, timeout time.Duration, cond func(unitProps) bool, props ...string) unitProps {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p := s.show(unit, props...)
		if cond(p) {
			return p
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: %s: not after %v: %v", unit, what, timeout, p)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// consoleTail is the end of the console log: systemd's messages and the
// services' output.
func (s *sandbox) consoleTail() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "console.log"))
	return string(bytes.ReplaceAll(tailLines(b, 150), []byte("\r"), nil))
}

func tailLines(b []byte, n int) []byte {
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, []byte("\n"))
}

// down powers the sandbox off (SIGKILL to its PID 1 if that takes too
// long: that ends the whole pid namespace), then removes its cgroups
// and its state directory.
func (s *sandbox) down() {
	if s.pid != 0 {
		syscall.Kill(s.pid, sigPoweroff)
		if _, ok := reaper.Wait(s.pid, sandboxTimeout); !ok {
			s.t.Logf("systemd sandbox did not power off in %v; killing its pid namespace", sandboxTimeout)
			syscall.Kill(s.pid, syscall.SIGKILL)
			if _, ok := reaper.Wait(s.pid, sandboxTimeout); !ok {
				s.t.Errorf("systemd sandbox: pid %d survives SIGKILL", s.pid)
				return
			}
		}
	}
	if s.console != nil {
		s.slave.Close()
		select {
		case <-s.logDone:
		case <-time.After(5 * time.Second): // a process still has the console open
		}
		s.console.Close() // interrupts the read: the master is pollable
		<-s.logDone
	}
	if s.t.Failed() {
		s.t.Logf("systemd sandbox console (last lines):\n%s", s.consoleTail())
	}
	s.removeCgroups()
	if err := s.removeState(); err != nil {
		s.t.Errorf("systemd sandbox: %v", err)
	}
}

// removeCgroups removes the private cgroup subtree, leaves first. A
// cgroup lingers briefly after its last process is reaped.
func (s *sandbox) removeCgroups() {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var dirs []string
		filepath.WalkDir(s.cgroup, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			syscall.Rmdir(dirs[i])
		}
		if _, err := os.Stat(s.cgroup); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			s.t.Errorf("systemd sandbox: could not remove cgroup %s", s.cgroup)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// removeState removes the state directory, unless something is still
// mounted below it (it would then remove files of that mount).
func (s *sandbox) removeState() error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], s.dir) {
			return fmt.Errorf("%s is still mounted; leaving %s", f[4], s.dir)
		}
	}
	return os.RemoveAll(s.dir)
}

// openPTY returns a new pty's master and its slave, whose output is
// passed through unchanged.
func openPTY() (master, slave *os.File, err error) {
	// Non-blocking, so that os.File uses the poller and Close interrupts
	// a read.
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("open /dev/ptmx", err)
	}
	master = os.NewFile(uintptr(m), "/dev/ptmx")
	fail := func(err error) (*os.File, *os.File, error) {
		master.Close()
		return nil, nil, err
	}
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		return fail(os.NewSyscallError("ioctl(TIOCSPTLCK)", err))
	}
	n, err := unix.IoctlGetUint32(m, unix.TIOCGPTN)
	if err != nil {
		return fail(os.NewSyscallError("ioctl(TIOCGPTN)", err))
	}
	name := fmt.Sprintf("/dev/pts/%d", n)
	sfd, err := unix.Open(name, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail(os.NewSyscallError("open "+name, err))
	}
	if tio, err := unix.IoctlGetTermios(sfd, unix.TCGETS); err == nil {
		tio.Oflag &^= unix.OPOST // no \r before every \n
		unix.IoctlSetTermios(sfd, unix.TCSETS, tio)
	}
	return master, os.NewFile(uintptr(sfd), name), nil
}

// sandboxInit runs as PID 1 of the new namespaces: it fences them in
// (see sandbox) and execs systemd. It returns only on failure.
func sandboxInit(dir, console, systemd string) error {
	const (
		ro     = unix.MS_RDONLY
		nosuid = unix.MS_NOSUID
		nodev  = unix.MS_NODEV
		noexec = unix.MS_NOEXEC
	)
	mount := func(source, target, fstype string, flags uintptr, data string) error {
		if err := unix.Mount(source, target, fstype, flags, data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", source, target, err)
		}
		return nil
	}
	bindRO := func(path string) error {
		if err := mount(path, path, "", unix.MS_BIND, ""); err != nil {
			return err
		}
		return mount("", path, "", unix.MS_REMOUNT|unix.MS_BIND|ro|nosuid|nodev|noexec, "")
	}
	steps := []func() error{
		// First of all: nothing done here may propagate to the host.
		func() error { return mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "") },
		func() error { return mount("proc", "/proc", "proc", nosuid|nodev|noexec, "") },
		func() error { return mount("tmpfs", "/run", "tmpfs", nosuid|nodev, "mode=0755,size=256m") },
		// Read-only /sys: MS_BIND makes it this mount's flag only; the
		// host's sysfs stays writable.
		func() error {
			return mount("", "/sys", "", unix.MS_REMOUNT|unix.MS_BIND|ro|nosuid|nodev|noexec, "")
		},
		// The host's cgroup mounts go; the cgroup2 hierarchy, whose
		// root is now our private subtree, comes alone.
		func() error {
			if err := unix.Unmount("/sys/fs/cgroup", unix.MNT_DETACH); err != nil && err != unix.EINVAL {
				return fmt.Errorf("umount /sys/fs/cgroup: %w", err)
			}
			return mount("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid|nodev|noexec, "")
		},
		func() error { return bindRO("/proc/sys") },
		func() error {
			if _, err := os.Stat("/proc/sysrq-trigger"); err != nil {
				return nil
			}
			return bindRO("/proc/sysrq-trigger")
		},
		func() error { return mount("/dev/null", "/dev/kmsg", "", unix.MS_BIND, "") },
		func() error { return mount(console, "/dev/console", "", unix.MS_BIND, "") },
		func() error { return overlay(dir, "/etc") },
		func() error { return overlay(dir, "/var") },
		func() error {
			if fi, err := os.Stat("/var/log/journal"); err != nil || !fi.IsDir() {
				return nil
			}
			return mount("tmpfs", "/var/log/journal", "tmpfs", nosuid|nodev, "mode=2755,size=64m")
		},
		// Private identity; /etc is the overlay by now.
		func() error {
			id := make([]byte, 16)
			rand.Read(id)
			return os.WriteFile("/etc/machine-id", []byte(hex.EncodeToString(id)+"\n"), 0o444)
		},
		func() error { return unix.Sethostname([]byte("sandbox")) },
		func() error { return os.WriteFile("/etc/hostname", []byte("sandbox\n"), 0o644) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	args := []string{systemd, "--system", "--unit=default.target", "--show-status=no", "--log-level=info",
		"--log-target=console", "--default-standard-output=tty", "--default-standard-error=tty"}
	env := []string{"container=handoff-sandbox", "TERM=dumb", "LANG=C.UTF-8",
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		// Only the test's units and the stubs: no trailing colon, which
		// would add the host's unit directories.
		"SYSTEMD_UNIT_PATH=" + filepath.Join(dir, "units") + ":" + filepath.Join(dir, "base"),
		"SYSTEMD_GENERATOR_PATH=" + filepath.Join(dir, "empty"),
		"SYSTEMD_ENVIRONMENT_GENERATOR_PATH=" + filepath.Join(dir, "empty"),
	}
	return unix.Exec(systemd, args, env)
}

// overlay mounts a copy-on-write layer over path, whose changes land in
// the state directory dir.
func overlay(dir, path string) error {
	base := filepath.Join(dir, "overlay", strings.ReplaceAll(strings.Trim(path, "/"), "/", "_"))
	upper, work := filepath.Join(base, "upper"), filepath.Join(base, "work")
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	opts := "lowerdir=" + path + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", path, "overlay", 0, opts); err != nil {
		return fmt.Errorf("overlay on %s: %w", path, err)
	}
	return nil
}

// sandboxBaseUnits are the units every sandbox has besides the test's:
// stubs of the targets that services and sockets depend on by default,
// and what poweroff needs.
var sandboxBaseUnits = func() map[string]string {
	units := map[string]string{
		"default.target": "[Unit]\nDescription=Sandbox default target\nRequires=basic.target\nWants=sockets.target\n" +
			"After=basic.target sockets.target\nAllowIsolate=yes\n",
		"basic.target": "[Unit]\nDescription=Basic System (stub)\nRequires=sysinit.target\n" +
			"Wants=sockets.target timers.target paths.target slices.target\n" +
			"After=sysinit.target sockets.target paths.target slices.target timers.target\n",
		"shutdown.target": "[Unit]\nDescription=Shutdown\nDefaultDependencies=no\nRefuseManualStart=yes\n",
		"umount.target":   "[Unit]\nDescription=Unmount All Filesystems\nDefaultDependencies=no\n",
		"final.target": "[Unit]\nDescription=Late Shutdown Services\nDefaultDependencies=no\nRefuseManualStart=yes\n" +
			"After=shutdown.target umount.target\n",
		"poweroff.target": "[Unit]\nDescription=Power-Off (sandbox)\nDefaultDependencies=no\n" +
			"Requires=systemd-poweroff.service\nAfter=systemd-poweroff.service\nAllowIsolate=yes\n",
		"systemd-poweroff.service": "[Unit]\nDescription=Power-Off (sandbox)\nDefaultDependencies=no\n" +
			"Requires=shutdown.target umount.target final.target\nAfter=shutdown.target umount.target final.target\n" +
			"SuccessAction=poweroff-force\n",
	}
	for _, t := range []string{"sysinit", "sockets", "timers", "paths", "slices", "local-fs", "local-fs-pre",
		"remote-fs", "swap", "network", "network-pre", "network-online", "nss-lookup", "time-sync", "multi-user"} {
		units[t+".target"] = "[Unit]\nDescription=" + t + ".target (stub)\n"
	}
	return units
}()
