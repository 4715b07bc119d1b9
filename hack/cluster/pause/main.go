// Command pause is the local cluster's pod sandbox ("pause") process: it blocks
// until SIGTERM or SIGINT, reaping any orphaned children meanwhile (it is PID 1
// of pods that share their process namespace), and exits 0.
//
// For hack/cluster/cluster.sh's self-test the same static binary doubles as a
// tiny HTTP server (-listen :8080 answers "ok <hostname>") and client
// (-get URL exits 0 once URL answered 200), so the cluster needs no other image.
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "", "serve HTTP on this address instead of only waiting")
	get := flag.String("get", "", "GET this URL (retrying for up to -timeout) and exit 0 on a 200")
	timeout := flag.Duration("timeout", 30*time.Second, "how long -get keeps trying")
	flag.Parse()

	if *get != "" {
		os.Exit(fetch(*get, *timeout))
	}
	if *listen != "" {
		go serve(*listen)
	}

	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			return
		}
		reap()
	}
}

// reap collects every exited child without blocking.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

func serve(addr string) {
	host, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = fmt.Fprintf(w, "ok %s\n", host)
	})
	if err := http.ListenAndServe(addr, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func fetch(url string, timeout time.Duration) int {
	client := &http.Client{Timeout: 3 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				fmt.Printf("%s: %s", url, body)
				return 0
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "%s: %v\n", url, err)
			return 1
		}
		time.Sleep(500 * time.Millisecond)
	}
}
