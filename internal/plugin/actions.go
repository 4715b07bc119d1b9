package plugin

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
)

func backupCommand(o *options) *cobra.Command {
	var name, method string
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "backup DATABASE",
		Short: "Take a one-shot Backup of a Database now (to its default location)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			ns, c, _, _, err := o.load(ctx, args[0])
			if err != nil {
				return err
			}
			if name == "" {
				name = fmt.Sprintf("%s-%s", args[0], time.Now().UTC().Format("20060102-150405"))
			}
			m, err := backupMethod(method)
			if err != nil {
				return err
			}
			b := &databasev1.Backup{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Spec:       databasev1.BackupSpec{DatabaseRef: corev1.LocalObjectReference{Name: args[0]}, Method: m},
			}
			return o.createAndFollow(ctx, c, b, wait, timeout, func() outcome {
				switch b.Status.Phase {
				case databasev1.BackupCompleted:
					return outcome{done: true, summary: fmt.Sprintf("Completed in %s, %s at %s", b.Status.Duration,
						humanBytes(b.Status.SizeBytes), b.Status.BackupLocation)}
				case databasev1.BackupFailed:
					return outcome{done: true, failure: b.Status.Error}
				}
				return outcome{phase: string(b.Status.Phase), conditions: b.Status.Conditions}
			})
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name of the Backup (default <database>-<UTC time>)")
	cmd.Flags().StringVar(&method, "method", "logical", "logical (pg_dump) or physical (a base backup into the Database's WAL archive)")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the backup completed or failed, printing its progress")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "how long --wait waits")
	return cmd
}

// restoreFlags are restore's flags.
type restoreFlags struct {
	backup, toTime, toLSN, toXID, toRestorePoint, undo string
	latest, exclusive                                  bool
	keepPreviousFor                                    time.Duration
}

// restoreSpec is the Restore the flags ask for: logical (--backup alone), a
// point-in-time restore in place (one --to-… flag or --latest, optionally
// from --backup, a Physical one), or an undo.
func restoreSpec(db string, f restoreFlags) (databasev1.RestoreSpec, error) {
	spec := databasev1.RestoreSpec{DatabaseRef: corev1.LocalObjectReference{Name: db}}
	if f.keepPreviousFor > 0 {
		spec.KeepPreviousFor = &metav1.Duration{Duration: f.keepPreviousFor}
	}
	var t databasev1.RecoveryTarget
	targets := 0
	if f.toTime != "" {
		at, err := time.Parse(time.RFC3339Nano, f.toTime)
		if err != nil {
			return spec, fmt.Errorf("--to-time %q: want RFC 3339, e.g. 2026-12-07T11:59:30Z", f.toTime)
		}
		mt := metav1.NewTime(at)
		t.Time, targets = &mt, targets+1
	}
	for _, v := range []struct {
		val string
		dst *string
	}{{f.toLSN, &t.LSN}, {f.toXID, &t.XID}, {f.toRestorePoint, &t.RestorePoint}} {
		if v.val != "" {
			*v.dst, targets = v.val, targets+1
		}
	}
	if f.latest {
		t.Latest, targets = true, targets+1
	}
	switch {
	case f.undo != "":
		if targets > 0 || f.backup != "" {
			return spec, errors.New("--undo takes no --backup and no target: it puts back what that point-in-time Restore replaced")
		}
		spec.Undo = f.undo
	case targets > 1:
		return spec, errors.New("give one target: --to-time, --to-lsn, --to-xid, --to-restore-point or --latest")
	case targets == 1:
		if f.exclusive {
			no := false
			t.Inclusive = &no
		}
		spec.PointInTime = &databasev1.RestorePointInTime{RecoveryTarget: t}
		spec.BackupRef.Name = f.backup
	case f.backup == "":
		return spec, errors.New("--backup is required: the name of a completed Backup (kubectl get pgbackup), " +
			"or a point in time (--to-time, --to-lsn, --to-xid, --to-restore-point, --latest), or --undo RESTORE")
	default:
		if f.exclusive {
			return spec, errors.New("--exclusive goes with a point-in-time target")
		}
		spec.BackupRef.Name = f.backup
	}
	return spec, nil
}

// backupMethod is --method's Backup method.
func backupMethod(m string) (databasev1.BackupMethod, error) {
	switch strings.ToLower(m) {
	case "", "logical":
		return databasev1.BackupMethodLogical, nil
	case "physical":
		return databasev1.BackupMethodPhysical, nil
	}
	return "", fmt.Errorf("--method %q: logical or physical", m)
}

func restoreCommand(o *options) *cobra.Command {
	var name string
	var f restoreFlags
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "restore DATABASE (--backup BACKUP | --to-time T | --to-lsn L | --to-xid X | --to-restore-point P | --latest | --undo RESTORE)",
		Short: "Restore a Database: a logical Backup atomically, or in place to a point in time from its WAL archive (undoable)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			spec, err := restoreSpec(args[0], f)
			if err != nil {
				return err
			}
			ns, c, _, _, err := o.load(ctx, args[0])
			if err != nil {
				return err
			}
			if name == "" {
				name = fmt.Sprintf("%s-restore-%s", args[0], time.Now().UTC().Format("20060102-150405"))
			}
			rs := &databasev1.Restore{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
			return o.createAndFollow(ctx, c, rs, wait, timeout, func() outcome {
				switch rs.Status.Phase {
				case databasev1.RestoreCompleted:
					if r := rs.Status.Recovery; r != nil {
						return outcome{done: true, summary: fmt.Sprintf("Restored in place to %s: replay ended at %s, timeline %d; "+
							"the previous data directory is kept until %s (undo: kubectl pg restore %s --undo %s)", r.Target, orDash(r.ReachedLSN), r.Timeline,
							orDash(timeString(rs.Status.PreviousDataDropAfter)), args[0], rs.Name)}
					}
					return outcome{done: true, summary: fmt.Sprintf("Completed in %s; previous database kept as %s",
						orDash(rs.Status.Duration), orDash(rs.Status.PreviousDatabase))}
				case databasev1.RestoreFailed:
					return outcome{done: true, failure: rs.Status.Error}
				}
				return outcome{phase: string(rs.Status.Phase), conditions: rs.Status.Conditions}
			})
		},
	}
	cmd.Flags().StringVar(&f.backup, "backup", "", "the completed Backup to restore (with a point-in-time target: the Physical Backup to start from)")
	cmd.Flags().StringVar(&f.toTime, "to-time", "", "restore in place to this time (RFC 3339) from the WAL archive")
	cmd.Flags().StringVar(&f.toLSN, "to-lsn", "", "restore in place to this WAL position (e.g. 0/3000060)")
	cmd.Flags().StringVar(&f.toXID, "to-xid", "", "restore in place to the commit of this transaction")
	cmd.Flags().StringVar(&f.toRestorePoint, "to-restore-point", "", "restore in place to this pg_create_restore_point() name")
	cmd.Flags().BoolVar(&f.latest, "latest", false, "restore in place to the end of the WAL archive")
	cmd.Flags().BoolVar(&f.exclusive, "exclusive", false, "stop just before the target instead of just after it")
	cmd.Flags().StringVar(&f.undo, "undo", "", "undo this point-in-time Restore: put back the data directory it replaced")
	cmd.Flags().DurationVar(&f.keepPreviousFor, "keep-previous-for", 0, "how long the replaced database or data directory is kept (default 24h)")
	cmd.Flags().StringVar(&name, "name", "", "name of the Restore (default <database>-restore-<UTC time>)")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the restore completed or failed, printing its progress")
	cmd.Flags().DurationVar(&timeout, "timeout", 60*time.Minute, "how long --wait waits")
	return cmd
}

func switchoverCommand(o *options) *cobra.Command {
	var to string
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "switchover DATABASE [--to POD]",
		Short: "Move the primary to another instance without losing a transaction",
		Long: "Asks the operator for a switchover (annotation " + databasev1.AnnotationSwitchoverTo + "): the primary " +
			"stops taking writes, the target receives all of its WAL and is promoted. Without --to the most advanced standby is chosen.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			_, c, _, db, err := o.load(ctx, args[0])
			if err != nil {
				return err
			}
			if to == db.Status.CurrentPrimary && to != "" {
				return fmt.Errorf("%s is already the primary", to)
			}
			target := to
			if target == "" {
				target = databasev1.SwitchoverAuto
			}
			before := db.Status.LastPrimaryChange.DeepCopy()
			patch := client.MergeFrom(db.DeepCopy())
			if db.Annotations == nil {
				db.Annotations = map[string]string{}
			}
			db.Annotations[databasev1.AnnotationSwitchoverTo] = target
			if err := c.Patch(ctx, db, patch); err != nil {
				return fmt.Errorf("requesting the switchover: %w", err)
			}
			fmt.Fprintf(o.out, "switchover of %s from %s to %s requested\n", db.Name, orDash(db.Status.CurrentPrimary), target)
			if !wait {
				return nil
			}
			return waitFor(ctx, o.out, timeout, time.Second, func() (bool, string, error) {
				if err := c.Get(ctx, client.ObjectKeyFromObject(db), db); err != nil {
					return false, "", err
				}
				if ch := db.Status.PrimaryChange; ch != nil {
					return false, fmt.Sprintf("%s %s → %s: %s", ch.Kind, orDash(ch.From), orDash(ch.To), ch.Phase), nil
				}
				if _, pending := db.Annotations[databasev1.AnnotationSwitchoverTo]; pending {
					return false, "waiting for the operator", nil
				}
				last := db.Status.LastPrimaryChange
				if last == nil || (before != nil && last.StartedAt.Equal(&before.StartedAt)) {
					return true, "", errors.New("the switchover was refused: see kubectl describe database " + db.Name + " (event SwitchoverRefused)")
				}
				if last.Phase != databasev1.PrimaryChangeCompleted {
					return true, "", fmt.Errorf("the switchover ended %s: %s", last.Phase, last.Message)
				}
				return true, fmt.Sprintf("switchover completed: %s is the primary (timeline %d)", last.To, db.Status.Timeline), nil
			})
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the instance (pod) to promote (default: the most advanced standby)")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the switchover completed or was refused")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long --wait waits")
	return cmd
}

func psqlCommand(o *options) *cobra.Command {
	var replica bool
	var database string
	cmd := &cobra.Command{
		Use:   "psql DATABASE [-- PSQL ARGS...]",
		Short: "psql as the local superuser in the primary (or a standby with --replica)",
		Long: "Runs psql in the instance's container over its private socket (" + socketDir + ") as postgres, " +
			"authenticated by the operating system user (no password). Arguments after -- go to psql, e.g. -- -c 'SELECT 1'.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			ns, _, cs, db, err := o.load(ctx, args[0])
			if err != nil {
				return err
			}
			pod := db.Status.CurrentPrimary
			if replica {
				pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: instanceSelector(db.Name) + "," + labelRole + "=replica"})
				if err != nil {
					return err
				}
				pod = ""
				for _, p := range pods.Items {
					if podReady(&p) {
						pod = p.Name
						break
					}
				}
				if pod == "" {
					return errors.New("no ready standby")
				}
			}
			if pod == "" {
				return errors.New("the Database has no primary yet (kubectl pg status " + db.Name + ")")
			}
			if database == "" {
				database = db.Spec.DatabaseName
			}
			kargs := []string{"exec", "-n", ns, "-c", container, pod}
			if isTerminal() {
				kargs = append(kargs, "-it")
			} else {
				kargs = append(kargs, "-i")
			}
			kargs = append(kargs, "--", "psql", "-h", socketDir, "-U", "postgres", "-d", database)
			return o.runKubectl(ctx, append(kargs, args[1:]...)...)
		},
	}
	cmd.Flags().BoolVar(&replica, "replica", false, "connect to a ready standby (read-only) instead of the primary")
	cmd.Flags().StringVarP(&database, "dbname", "d", "", "database to connect to (default the Database's spec.databaseName)")
	return cmd
}

func logsCommand(o *options) *cobra.Command {
	var follow, all bool
	var tail int
	cmd := &cobra.Command{
		Use:   "logs DATABASE",
		Short: "PostgreSQL's and the agent's log of the primary (or of every instance with --all)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			ns, _, _, db, err := o.load(ctx, args[0])
			if err != nil {
				return err
			}
			kargs := []string{"logs", "-n", ns, "-c", container, fmt.Sprintf("--tail=%d", tail), "--prefix"}
			if follow {
				kargs = append(kargs, "-f")
			}
			if all || db.Status.CurrentPrimary == "" {
				kargs = append(kargs, "-l", instanceSelector(db.Name), "--max-log-requests=20")
			} else {
				kargs = append(kargs, "pod/"+db.Status.CurrentPrimary)
			}
			return o.runKubectl(ctx, kargs...)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "stream the log")
	cmd.Flags().BoolVar(&all, "all", false, "every instance, not only the primary")
	cmd.Flags().IntVar(&tail, "tail", 200, "lines per instance (-1: all)")
	return cmd
}

// outcome is where a created Backup or Restore stands.
type outcome struct {
	done             bool
	summary, failure string
	phase            string
	conditions       []metav1.Condition
}

// createAndFollow creates obj and, with wait, prints its progress (phase and
// Ready message) until state says it is done; a failure is an error.
func (o *options) createAndFollow(ctx context.Context, c client.Client, obj client.Object, wait bool, timeout time.Duration, state func() outcome) error {
	kind := strings.ToLower(reflect.TypeOf(obj).Elem().Name())
	if err := c.Create(ctx, obj); err != nil {
		return fmt.Errorf("creating %s %s: %w", kind, obj.GetName(), err)
	}
	fmt.Fprintf(o.out, "%s.database.example.com/%s created\n", kind, obj.GetName())
	if !wait {
		return nil
	}
	name := obj.GetName()
	return waitFor(ctx, o.out, timeout, time.Second, func() (bool, string, error) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			return false, "", err
		}
		st := state()
		switch {
		case st.done && st.failure != "":
			return true, name + ": Failed", fmt.Errorf("%s %s failed: %s", kind, name, st.failure)
		case st.done:
			return true, name + ": " + st.summary, nil
		}
		progress := name + ": " + orDash(st.phase)
		if ready := meta.FindStatusCondition(st.conditions, databasev1.ConditionReady); ready != nil && ready.Message != "" {
			progress += ": " + ready.Message
		}
		return false, progress, nil
	})
}

// timeString is t in RFC 3339 ("" when nil).
func timeString(t *metav1.Time) string {
	if t == nil {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}
