package scale

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/example/postgres-operator/internal/testenv"
)

// Operator is the benchmark's operator process (test/scale/operator).
type Operator struct {
	cmd         *exec.Cmd
	requestsURL string
	metricsURL  string
	pprofURL    string
	Started     time.Time
	peakRSS     atomic.Int64
	done        chan struct{}
}

// StartOperator runs bin against kubeconfig with the given agents mode and
// extra manager flags, and samples its RSS until it exits.
func StartOperator(bin, kubeconfig, agents string, log io.Writer, managerArgs ...string) (*Operator, error) {
	port, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	pport, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	o := &Operator{metricsURL: fmt.Sprintf("http://127.0.0.1:%d/metrics", port), pprofURL: fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/", pport), done: make(chan struct{})}
	args := append([]string{"--agents=" + agents, "--requests-address=127.0.0.1:0", "--",
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", port), "--metrics-secure=false",
		"--health-probe-bind-address=0", fmt.Sprintf("--pprof-bind-address=127.0.0.1:%d", pport), "--agent-image=postgres-operator:bench", "--log-level=error"}, managerArgs...)
	cmd := exec.Command(bin, args...) // #nosec G204 -- the benchmark's own operator binary
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	cmd.Stdout = log
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	p, err := startProcess(cmd)
	if err != nil {
		return nil, err
	}
	p.metricsURL, p.pprofURL = o.metricsURL, o.pprofURL
	o = p
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if a, ok := strings.CutPrefix(line, "requests-address "); ok {
				addr <- a
				continue
			}
			fmt.Fprintln(log, "operator:", line)
		}
	}()
	select {
	case a := <-addr:
		o.requestsURL = "http://" + a + "/"
	case <-time.After(30 * time.Second):
		o.Kill()
		return nil, fmt.Errorf("the operator did not report its requests address")
	}
	return o, nil
}

// startProcess starts cmd and samples its memory until it exits.
func startProcess(cmd *exec.Cmd) (*Operator, error) {
	o := &Operator{cmd: cmd, done: make(chan struct{}), Started: time.Now()}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlives the benchmark
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	go o.sample()
	return o, nil
}

func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// sample reads the process's resident set every 100 ms (and its high-water
// mark, which the kernel keeps between samples).
func (o *Operator) sample() {
	defer close(o.done)
	pid := o.cmd.Process.Pid
	go func() { _ = o.cmd.Wait() }()
	for {
		hwm, ok := readStatusKiB(pid, "VmHWM:")
		if !ok {
			return
		}
		if v := hwm * 1024; v > o.peakRSS.Load() {
			o.peakRSS.Store(v)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readStatusKiB(pid int, field string) (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// RSS is the resident set now, in bytes.
func (o *Operator) RSS() int64 {
	n, _ := readStatusKiB(o.cmd.Process.Pid, "VmRSS:")
	return n * 1024
}

// PeakRSS is the highest resident set so far, in bytes.
func (o *Operator) PeakRSS() int64 { return o.peakRSS.Load() }

// Requests returns the operator's API requests so far.
func (o *Operator) Requests(ctx context.Context) (Counts, error) {
	var s []Count
	if err := getJSON(ctx, o.requestsURL, &s); err != nil {
		return nil, fmt.Errorf("reading the operator's request counts: %w", err)
	}
	return Index(s), nil
}

// Reconciles returns the Database controller's reconciles so far and its
// work queue's depth.
func (o *Operator) Reconciles(ctx context.Context) (total, depth float64, err error) {
	fams, err := o.metrics(ctx)
	if err != nil {
		return 0, 0, err
	}
	if f := fams["controller_runtime_reconcile_total"]; f != nil {
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == "controller" && l.GetValue() == "database" {
					total += m.GetCounter().GetValue()
				}
			}
		}
	}
	depth, _ = testenv.Sample(fams, "workqueue_depth", "name", "database")
	return total, depth, nil
}

// HeapInUse is the Go heap in use (go_memstats_heap_inuse_bytes), bytes.
func (o *Operator) HeapInUse(ctx context.Context) (int64, error) {
	fams, err := o.metrics(ctx)
	if err != nil {
		return 0, err
	}
	v, _ := testenv.Sample(fams, "go_memstats_heap_inuse_bytes")
	return int64(v), nil
}

// LiveHeap is the Go heap after a forced collection
// (go_memstats_heap_alloc_bytes right after /debug/pprof/heap?gc=1), bytes:
// what the process holds, without the garbage that its RSS also counts.
func (o *Operator) LiveHeap(ctx context.Context) (int64, error) {
	if err := o.heapProfile(ctx, io.Discard); err != nil {
		return 0, err
	}
	fams, err := o.metrics(ctx)
	if err != nil {
		return 0, err
	}
	v, _ := testenv.Sample(fams, "go_memstats_heap_alloc_bytes")
	return int64(v), nil
}

// metrics scrapes the process's Prometheus endpoint.
func (o *Operator) metrics(ctx context.Context) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.metricsURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return testenv.ParseMetrics(resp.Body)
}

func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

// SaveHeapProfile writes the operator's heap profile (after a GC) to path.
func (o *Operator) SaveHeapProfile(ctx context.Context, path string) error {
	f, err := os.Create(path) // #nosec G304 -- the benchmark's own output
	if err != nil {
		return err
	}
	defer f.Close()
	return o.heapProfile(ctx, f)
}

// heapProfile forces a collection in the operator and copies its heap
// profile to w.
func (o *Operator) heapProfile(ctx context.Context, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.pprofURL+"heap?gc=1", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	return err
}

// Stop ends the operator with SIGTERM (as a rollout does) and waits.
func (o *Operator) Stop() {
	_ = o.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-o.done:
	case <-time.After(30 * time.Second):
		o.Kill()
	}
}

// Kill ends it at once.
func (o *Operator) Kill() {
	_ = o.cmd.Process.Kill()
	<-o.done
}
