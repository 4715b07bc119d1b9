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
	var name string
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
			b := &databasev1.Backup{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Spec:       databasev1.BackupSpec{DatabaseRef: corev1.LocalObjectReference{Name: args[0]}},
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
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the backup completed or failed, printing its progress")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "how long --wait waits")
	return cmd
}

func restoreCommand(o *options) *cobra.Command {
	var name, backup string
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "restore DATABASE --backup BACKUP",
		Short: "Restore a Database from a completed Backup (atomically; the previous database is kept)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if backup == "" {
				return errors.New("--backup is required: the name of a completed Backup (kubectl get pgbackup)")
			}
			ns, c, _, _, err := o.load(ctx, args[0])
			if err != nil {
				return err
			}
			if name == "" {
				name = fmt.Sprintf("%s-restore-%s", args[0], time.Now().UTC().Format("20060102-150405"))
			}
			rs := &databasev1.Restore{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Spec: databasev1.RestoreSpec{DatabaseRef: corev1.LocalObjectReference{Name: args[0]},
					BackupRef: corev1.LocalObjectReference{Name: backup}},
			}
			return o.createAndFollow(ctx, c, rs, wait, timeout, func() outcome {
				switch rs.Status.Phase {
				case databasev1.RestoreCompleted:
					return outcome{done: true, summary: fmt.Sprintf("Completed in %s; previous database kept as %s",
						orDash(rs.Status.Duration), orDash(rs.Status.PreviousDatabase))}
				case databasev1.RestoreFailed:
					return outcome{done: true, failure: rs.Status.Error}
				}
				return outcome{phase: string(rs.Status.Phase), conditions: rs.Status.Conditions}
			})
		},
	}
	cmd.Flags().StringVar(&backup, "backup", "", "the completed Backup to restore (required)")
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
