// Package agentapi is the contract between the operator and the instance
// agent, version 1: every type, HTTP path, port, file and directory name,
// client certificate name and Lease annotation that crosses the boundary, and
// the client the operator and the restore Jobs call the agent with.
//
// The operator's controllers and the backup Jobs import this package, never
// the agent's runtime (internal/instance): a depguard rule in .golangci.yml
// fails `make lint` otherwise. A change to anything here is a change to the
// protocol: add fields (older peers ignore them), never change the meaning of
// one; a change an older peer would misread bumps ProtocolVersion, and the
// agent keeps serving the previous version's paths for one release.
package agentapi
