// kubectl-pg is the kubectl plugin of the postgres-operator: put it on PATH and
// run `kubectl pg --help`.
package main

import (
	"os"

	"github.com/example/postgres-operator/internal/plugin"
)

func main() { os.Exit(plugin.Main(os.Args[1:])) }
