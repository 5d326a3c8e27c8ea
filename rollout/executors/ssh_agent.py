"""The kept shell's supervisor: a small Perl program that runs commands and reports their exact end.

A POSIX shell cannot run a fleet's commands for us: `wait` reports a command ended by a
signal and one that exited 128+N alike, and the executor contract tells them apart. A
parent that calls waitpid(2) itself can. Where the host has `perl` (Debian and Ubuntu
always do: perl-base is essential) and setsid(2) by a known number or util-linux `setsid`,
the kept shell replaces itself with this program.

Started as `perl -e AGENT MARK TAG ROUNDS N SETSID`, it first checks that a child becomes a
session and process group of its own with the child's pid (through setsid(2) by number
SETSID where that is known, else util-linux `setsid`, which must not fork), and reports
"@rollout-control N 0", else "... N 1" and exits. Then it reads one request per line:

    K N HEX(SCRIPT)        run a control script with /bin/sh, output discarded; answers
                           "@rollout-control N STATUS"
    C N HEX(COMMAND) HEX(NAME)=HEX(VALUE)...
                           run COMMAND (see ssh_kept): fork; print "\\nTAG N S PID" on
                           stdout; only then let the child go on (it waits on a pipe, and
                           exits without running anything if the supervisor died first):
                           it calls setsid and execs `/bin/sh -c COMMAND` with stdin at
                           end-of-file and NAME=VALUE added to its environment. Wait for
                           it, kill what it left in its group (TERM, up to the grace,
                           KILL), then print "\\nTAG N E STATUS" on stdout and "\\nTAG N E"
                           on stderr; STATUS is the exit code, or sSIG for a signal.

It uses no module (loading POSIX alone costs 17 ms), only perl's built-ins: fork, exec,
waitpid, kill of a group, select as a sleep. Fields are hex so that no quoting is needed.
It ends when its stdin does (the connection closed) or when a write fails (SIGPIPE).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from rollout.executors.ssh_process import GRACE_ROUNDS

AGENT = r"""
$| = 1;
my ($mark, $tag, $rounds, $hello, $nr) = @ARGV;
sub unhex { return pack('H*', $_[0] // '') }
sub selfcheck {
  if ($nr) {
    my $p = fork; return 0 unless defined $p;
    if (!$p) { my $sid = syscall($nr); exit(($sid == $$ && getpgrp() == $$) ? 0 : 1) }
    waitpid($p, 0); return $? == 0 ? 1 : 0;
  }
  pipe(my $r, my $w) or return 0;
  my $p = fork; return 0 unless defined $p;
  if (!$p) { close $r; open(STDOUT, '>&', $w); open(STDIN, '<', '/dev/null'); exec('setsid', '/bin/sh', '-c', 'echo $$'); exit 127 }
  close $w; my $l = <$r>; close $r; waitpid($p, 0);
  return (defined $l && $l eq "$p\n" && $? == 0) ? 1 : 0;
}
sub leftovers {
  my $g = shift;
  return unless kill('TERM', -$g);
  for (1 .. $rounds) { last unless kill(0, -$g); select(undef, undef, undef, 0.05) }
  kill('KILL', -$g);
}
my $ok = selfcheck();
print "$mark $hello " . ($ok ? 0 : 1) . "\n";
exit 1 unless $ok;
while (defined(my $line = <STDIN>)) {
  chomp $line;
  my ($op, $seq, @f) = split(/ /, $line);
  if ($op eq 'K') {
    my $p = fork;
    if (!defined $p) { print "$mark $seq 255\n"; next }
    if (!$p) { open(STDIN, '<', '/dev/null'); open(STDOUT, '>', '/dev/null'); open(STDERR, '>', '/dev/null'); exec('/bin/sh', '-c', unhex($f[0])); exit 127 }
    waitpid($p, 0); print "$mark $seq " . ($? >> 8) . "\n"; next;
  }
  if ($op eq 'C') {
    my $c = unhex(shift @f);
    pipe(my $gate, my $go) or do { print STDERR "cannot pipe: $!\n"; print "\n$tag $seq E 255\n"; print STDERR "\n$tag $seq E\n"; next };
    my $p = fork;
    if (!defined $p) { print STDERR "cannot fork: $!\n"; print "\n$tag $seq E 255\n"; print STDERR "\n$tag $seq E\n"; next }
    if (!$p) {
      close $go;
      exit 0 unless sysread($gate, my $byte, 1);  # the supervisor died before reporting the group
      close $gate;
      for (@f) { my ($k, $v) = split(/=/, $_, 2); $ENV{unhex($k)} = unhex($v) }
      open(STDIN, '<', '/dev/null');
      if ($nr) { syscall($nr) == $$ or do { print STDERR "setsid: $!\n"; exit 126 }; exec('/bin/sh', '-c', $c) }
      else { exec('setsid', '/bin/sh', '-c', $c) }
      print STDERR "exec: $!\n"; exit 127;
    }
    close $gate;
    print "\n$tag $seq S $p\n";
    syswrite($go, 'g'); close $go;
    waitpid($p, 0); my $st = $?;
    leftovers($p);
    print "\n$tag $seq E " . (($st & 127) ? 's' . ($st & 127) : ($st >> 8)) . "\n";
    print STDERR "\n$tag $seq E\n";
    next;
  }
}
"""


#: setsid(2)'s number where we are sure of it (`uname -m`): the child calls it itself instead
#: of exec'ing util-linux setsid, one exec less per command (about 0.8 ms of the host's CPU).
#: The start-up check proves it on the host (the child becomes its own session and group).
SETSID_SYSCALLS = {"x86_64": 112, "aarch64": 157}


def setsid_syscall(machine: str) -> int:
    """The setsid syscall number for `uname -m`, or 0 to exec util-linux setsid."""
    return SETSID_SYSCALLS.get(machine.strip(), 0)


def start(mark: str, tag: str, seq: int, setsid_nr: int) -> str:
    """The kept shell's input that replaces it with the supervisor, which then reports as request `seq`."""
    args = f"{shlex.quote(mark)} {shlex.quote(tag)} {GRACE_ROUNDS} {seq} {setsid_nr}"
    return f"exec perl -e {shlex.quote(AGENT)} {args}\n"


def control(seq: int, script: str) -> str:
    """Run a control script (kill, clean-up) with /bin/sh."""
    return f"K {seq} {script.encode().hex()}\n"


def command(seq: int, text: str, env: Mapping[str, str]) -> str:
    """Run a command in a group and session of its own, reporting its group, end and exact status."""
    pairs = "".join(f" {name.encode().hex()}={value.encode().hex()}" for name, value in env.items())
    return f"C {seq} {text.encode().hex()}{pairs}\n"
