// Package instance is the instance agent: the process that runs as PID 1 of the
// postgres container of every Database pod. It bootstraps or clones the data
// directory, writes the configuration the operator owns, supervises PostgreSQL and
// serves the probe and status endpoints the kubelet and the operator read.
package instance
