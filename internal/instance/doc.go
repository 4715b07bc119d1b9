// Package instance is the instance agent: the process that runs as PID 1 of the
// postgres container of every Database pod. It bootstraps or clones the data
// directory, writes the configuration the operator owns, supervises PostgreSQL and
// serves the probe and status endpoints the kubelet and the operator read.
//
// What crosses the boundary with the operator (types, paths, files, Lease
// annotations) is internal/agentapi; this package is the runtime, one concern
// per file:
//
//	cmd.go         the instance subcommand's flags (Config)
//	agent.go       the Agent, its published runtime view, the start-up loop
//	plan.go        the start-up decision (planStart: initdb, clone, start, refuse…)
//	bootstrap.go   initdb and pg_basebackup
//	rewind.go      pg_rewind of a former primary
//	supervisor.go  the pure decideRun state machine of a PostgreSQL lifetime
//	supervise.go   carrying its actions out (fence, demote, follow, restart)
//	lease.go       the primary Lease keeper
//	primary.go     promotion and the set-up of a primary
//	config.go      PostgreSQL's configuration and reloads
//	userconfig.go  the user's spec.postgresql file
//	roles.go       the application, replication and monitoring roles
//	slots.go       the primary's replication slots
//	secrets.go     watching the mounted Secrets and applying changes
//	tls.go         certificates for PostgreSQL and the HTTPS endpoint
//	probes.go      the probe loop behind the kubelet's probes
//	status.go      the status report
//	server.go      the HTTP server (this protocol's and the previous one's paths)
//	restore.go     restores into the application database
//	metrics.go     the Prometheus metrics
//	files.go       directories, owners, secrets in memory, child processes
package instance
