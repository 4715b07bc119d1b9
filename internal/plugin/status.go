package plugin

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
)

// lag is a standby's replication lag as its primary reports it.
type lag struct {
	Bytes   float64
	Seconds float64
}

// statusView is everything `kubectl pg status` shows.
type statusView struct {
	DB      *databasev1.Database
	Pods    []corev1.Pod
	Lag     map[string]lag
	LagErr  string
	Backups []databasev1.Backup
	Now     time.Time
}

func statusCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "status DATABASE",
		Short: "Instances, roles, timeline, replication lag, conditions and backups of a Database",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			ns, c, cs, err := o.session()
			if err != nil {
				return err
			}
			v, err := collectStatus(ctx, c, cs, ns, args[0])
			if err != nil {
				return err
			}
			renderStatus(o.out, v)
			return nil
		},
	}
}

func collectStatus(ctx context.Context, c client.Client, cs kubernetes.Interface, ns, name string) (statusView, error) {
	v := statusView{Now: time.Now(), Lag: map[string]lag{}}
	var err error
	if v.DB, err = getDatabase(ctx, c, ns, name); err != nil {
		return v, err
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: instanceSelector(name)})
	if err != nil {
		return v, fmt.Errorf("listing the instances: %w", err)
	}
	v.Pods = pods.Items
	sort.Slice(v.Pods, func(i, j int) bool { return v.Pods[i].Name < v.Pods[j].Name })
	if p := v.DB.Status.CurrentPrimary; p != "" {
		raw, err := cs.CoreV1().Pods(ns).ProxyGet("http", p, metricsPort, "metrics", nil).DoRaw(ctx)
		if err == nil {
			v.Lag, err = parseLag(raw)
		}
		if err != nil {
			v.LagErr = fmt.Sprintf("lag unknown (the primary's metrics through the API server's pod proxy: %v)", err)
		}
	}
	var backups databasev1.BackupList
	if err := c.List(ctx, &backups, client.InNamespace(ns)); err != nil {
		return v, fmt.Errorf("listing backups: %w", err)
	}
	for _, b := range backups.Items {
		if b.Spec.DatabaseRef.Name == name && !isRun(&b) {
			v.Backups = append(v.Backups, b)
		}
	}
	return v, nil
}

// parseLag reads each standby's lag from a primary's metrics.
func parseLag(raw []byte) (map[string]lag, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	out := map[string]lag{}
	for name, f := range families {
		if name != "postgres_replication_lag_bytes" && name != "postgres_replication_lag_seconds" {
			continue
		}
		for _, m := range f.Metric {
			standby := ""
			for _, l := range m.Label {
				if l.GetName() == "application_name" {
					standby = l.GetValue()
				}
			}
			x := out[standby]
			if name == "postgres_replication_lag_bytes" {
				x.Bytes = m.GetGauge().GetValue()
			} else {
				x.Seconds = m.GetGauge().GetValue()
			}
			out[standby] = x
		}
	}
	return out, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func restarts(p *corev1.Pod) int32 {
	var n int32
	for _, s := range p.Status.ContainerStatuses {
		n += s.RestartCount
	}
	return n
}

func ago(now time.Time, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return now.Sub(t).Round(time.Second).String() + " ago"
}

// renderStatus writes the one-screen summary of v.
func renderStatus(w io.Writer, v statusView) {
	db := v.DB
	st := db.Status
	version := st.PostgresVersion
	if version == "" {
		version = "?"
	}
	fmt.Fprintf(w, "Database %s/%s: phase %s, ready %v, image %s (PostgreSQL %s)\n",
		db.Namespace, db.Name, orDash(string(st.Phase)), st.Ready, db.Spec.Image, version)
	fmt.Fprintf(w, "Primary: %s, timeline %d; instances %s\n", orDash(st.CurrentPrimary), st.Timeline, orDash(st.Instances))
	fmt.Fprintf(w, "Endpoints: read-write %s, read-only %s; credentials in Secret %s\n",
		orDash(st.Endpoint), orDash(st.ReadOnlyEndpoint), orDash(st.SecretName))
	if ch := st.PrimaryChange; ch != nil {
		fmt.Fprintf(w, "Primary change in progress: %s %s → %s, %s since %s\n", ch.Kind, orDash(ch.From), orDash(ch.To), ch.Phase, ago(v.Now, ch.PhaseSince.Time))
	}
	if ch := st.LastPrimaryChange; ch != nil {
		finished := time.Time{}
		if ch.FinishedAt != nil {
			finished = ch.FinishedAt.Time
		}
		fmt.Fprintf(w, "Last primary change: %s %s → %s, %s %s\n", ch.Kind, orDash(ch.From), orDash(ch.To), ch.Phase, ago(v.Now, finished))
	}
	if u := st.Upgrade; u != nil {
		fmt.Fprintf(w, "Major upgrade: %d → %d (%s): %s\n", u.FromMajor, u.ToMajor, u.Method, u.Phase)
	}
	if a := st.WALArchive; a != nil {
		last := orDash(a.LastArchivedWAL)
		if a.LastArchivedTime != nil {
			last += " at " + timeString(a.LastArchivedTime)
		}
		fmt.Fprintf(w, "WAL archive: %s, last archived %s, %d files pending\n", orDash(a.Location), last, a.PendingFiles)
		if c := meta.FindStatusCondition(st.Conditions, databasev1.ConditionRecoverable); c != nil && c.Status == metav1.ConditionTrue &&
			a.FirstRecoverablePoint != nil && a.LastRecoverablePoint != nil {
			fmt.Fprintf(w, "Recoverable window: %s to %s (%d usable base backups; kubectl pg restore %s --to-time …)\n",
				timeString(a.FirstRecoverablePoint), timeString(a.LastRecoverablePoint), a.UsableBaseBackups, db.Name)
		} else if c != nil {
			fmt.Fprintf(w, "Recoverable window: none (%s: %s)\n", c.Reason, c.Message)
		}
	}
	if ip := st.InPlaceRecovery; ip != nil && ip.Phase == databasev1.RestoreInProgress {
		fmt.Fprintf(w, "In-place point-in-time restore on %s: %s\n", ip.Pod, orDash(ip.Message))
	}

	fmt.Fprintln(w, "\nInstances:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tROLE\tREADY\tRESTARTS\tLAG BYTES\tLAG\tNODE\tAGE")
	for i := range v.Pods {
		p := &v.Pods[i]
		role := p.Labels[labelRole]
		if role == "" {
			role = "-"
		}
		lagBytes, lagSec := "-", "-"
		if l, ok := v.Lag[p.Name]; ok {
			lagBytes, lagSec = strconv.FormatFloat(l.Bytes, 'f', 0, 64), (time.Duration(l.Seconds * float64(time.Second))).Round(time.Millisecond).String()
		} else if p.Name != st.CurrentPrimary && v.LagErr == "" && st.CurrentPrimary != "" {
			lagBytes, lagSec = "not streaming", "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%d\t%s\t%s\t%s\t%s\n", p.Name, role, podReady(p), restarts(p), lagBytes, lagSec,
			orDash(p.Spec.NodeName), ago(v.Now, p.CreationTimestamp.Time))
	}
	tw.Flush()
	if v.LagErr != "" {
		fmt.Fprintln(w, v.LagErr)
	}

	fmt.Fprintln(w, "\nConditions:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TYPE\tSTATUS\tREASON\tSINCE\tMESSAGE")
	for _, c := range st.Conditions {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Type, c.Status, c.Reason, ago(v.Now, c.LastTransitionTime.Time), c.Message)
	}
	tw.Flush()

	fmt.Fprintln(w, "\nBackups:")
	if len(v.Backups) == 0 {
		fmt.Fprintln(w, "none (kubectl pg backup "+db.Name+")")
		return
	}
	sort.Slice(v.Backups, func(i, j int) bool {
		return v.Backups[i].CreationTimestamp.After(v.Backups[j].CreationTimestamp.Time)
	})
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSCHEDULE\tPHASE\tLAST SUCCESS\tSIZE\tDURATION\tERROR")
	for _, b := range v.Backups {
		last := time.Time{}
		if b.Status.BackupTime != nil {
			last = b.Status.BackupTime.Time
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.Name, orDash(b.Spec.Schedule), orDash(string(b.Status.Phase)),
			ago(v.Now, last), humanBytes(b.Status.SizeBytes), orDash(b.Status.Duration), oneLine(b.Status.Error))
	}
	tw.Flush()
	if ready := meta.FindStatusCondition(st.Conditions, databasev1.ConditionReady); ready != nil && ready.Status != "True" {
		fmt.Fprintf(w, "\nNot ready: %s\n", ready.Message)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return orDash(s)
}

func humanBytes(n int64) string {
	if n <= 0 {
		return "-"
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// isRun reports whether b is a run of a scheduled Backup.
func isRun(b *databasev1.Backup) bool {
	ref := metav1.GetControllerOf(b)
	return ref != nil && ref.Kind == "Backup"
}
