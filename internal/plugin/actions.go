package plugin

import (
	"errors"
	"fmt"
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
			ns, err := o.namespace()
			if err != nil {
				return err
			}
			c, _, err := o.clients()
			if err != nil {
				return err
			}
			if _, err := getDatabase(ctx, c, ns, args[0]); err != nil {
				return err
			}
			if name == "" {
				name = fmt.Sprintf("%s-%s", args[0], time.Now().UTC().Format("20060102-150405"))
			}
			b := &databasev1.Backup{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Spec:       databasev1.BackupSpec{DatabaseRef: corev1.LocalObjectReference{Name: args[0]}},
			}
			if err := c.Create(ctx, b); err != nil {
				return fmt.Errorf("creating Backup %s: %w", name, err)
			}
			fmt.Fprintf(o.out, "backup.database.example.com/%s created\n", name)
			if !wait {
				return nil
			}
			return waitFor(ctx, o.out, timeout, time.Second, func() (bool, string, error) {
				if err := c.Get(ctx, client.ObjectKeyFromObject(b), b); err != nil {
					return false, "", err
				}
				progress := fmt.Sprintf("%s: %s", name, orDash(string(b.Status.Phase)))
				if ready := meta.FindStatusCondition(b.Status.Conditions, databasev1.ConditionReady); ready != nil && ready.Message != "" {
					progress += ": " + ready.Message
				}
				switch b.Status.Phase {
				case databasev1.BackupCompleted:
					return true, fmt.Sprintf("%s: Completed in %s, %s at %s", name, b.Status.Duration,
						humanBytes(b.Status.SizeBytes), b.Status.BackupLocation), nil
				case databasev1.BackupFailed:
					return true, progress, errors.New("backup " + name + " failed: " + b.Status.Error)
				}
				return false, progress, nil
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
			ns, err := o.namespace()
			if err != nil {
				return err
			}
			c, _, err := o.clients()
			if err != nil {
				return err
			}
			if _, err := getDatabase(ctx, c, ns, args[0]); err != nil {
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
			if err := c.Create(ctx, rs); err != nil {
				return fmt.Errorf("creating Restore %s: %w", name, err)
			}
			fmt.Fprintf(o.out, "restore.database.example.com/%s created\n", name)
			if !wait {
				return nil
			}
			return waitFor(ctx, o.out, timeout, time.Second, func() (bool, string, error) {
				if err := c.Get(ctx, client.ObjectKeyFromObject(rs), rs); err != nil {
					return false, "", err
				}
				progress := fmt.Sprintf("%s: %s", name, orDash(string(rs.Status.Phase)))
				if ready := meta.FindStatusCondition(rs.Status.Conditions, databasev1.ConditionReady); ready != nil && ready.Message != "" {
					progress += ": " + ready.Message
				}
				switch rs.Status.Phase {
				case databasev1.RestoreCompleted:
					return true, fmt.Sprintf("%s: Completed in %s; previous database kept as %s", name,
						orDash(rs.Status.Duration), orDash(rs.Status.PreviousDatabase)), nil
				case databasev1.RestoreFailed:
					return true, progress, errors.New("restore " + name + " failed: " + rs.Status.Error)
				}
				return false, progress, nil
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
			ns, err := o.namespace()
			if err != nil {
				return err
			}
			c, _, err := o.clients()
			if err != nil {
				return err
			}
			db, err := getDatabase(ctx, c, ns, args[0])
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
			ns, err := o.namespace()
			if err != nil {
				return err
			}
			c, cs, err := o.clients()
			if err != nil {
				return err
			}
			db, err := getDatabase(ctx, c, ns, args[0])
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
			ns, err := o.namespace()
			if err != nil {
				return err
			}
			c, _, err := o.clients()
			if err != nil {
				return err
			}
			db, err := getDatabase(ctx, c, ns, args[0])
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
