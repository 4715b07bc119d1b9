package plugin

import (
	"os"

	"golang.org/x/sys/unix"
)

// isTerminal reports whether stdin is a terminal (psql then gets one too).
func isTerminal() bool {
	_, err := unix.IoctlGetTermios(int(os.Stdin.Fd()), unix.TCGETS)
	return err == nil
}
