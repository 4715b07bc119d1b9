package upgrade

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/example/postgres-operator/internal/postgres"
)

// querySocket runs one query through a Unix socket as the bootstrap superuser
// (peer authentication) and returns its rows as text.
func querySocket(ctx context.Context, sock string, port int, db, query string) ([][]string, error) {
	conn, err := connect(ctx, sock, port, db)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	return queryRows(ctx, conn, query)
}

func connect(ctx context.Context, sock string, port int, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable",
		postgres.ConninfoValue(sock), port, postgres.ConninfoValue(db)))
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg)
}

func queryRows(ctx context.Context, conn *pgx.Conn, query string) ([][]string, error) {
	rows, err := conn.Query(ctx, query, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]string
	for rows.Next() {
		vals := rows.RawValues()
		row := make([]string, len(vals))
		for i, v := range vals {
			row[i] = string(v)
		}
		out = append(out, row)
	}
	return out, rows.Err()
}

// databases lists the databases that accept connections.
func (r *runner) databases(ctx context.Context) ([]string, error) {
	rows, err := querySocket(ctx, r.work, upgradePort, "postgres", "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname")
	if err != nil {
		return nil, err
	}
	var dbs []string
	for _, row := range rows {
		dbs = append(dbs, row[0])
	}
	return dbs, nil
}

// collationIndexes finds the indexes of user tables whose keys use a collation
// that follows the C library (libc collations other than C and POSIX, and the
// database default when it is such a locale) or ICU, as asked.
const collationIndexes = `
SELECT DISTINCT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(i.indcollation::oid[]) AS k(coll)
JOIN pg_collation co ON co.oid = k.coll
JOIN pg_database d ON d.datname = current_database()
WHERE k.coll <> 0
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
  AND (
    ($1 AND co.collprovider = 'c' AND co.collcollate NOT IN ('C', 'POSIX'))
    OR ($2 AND co.collprovider = 'i')
    OR (co.collprovider = 'd' AND (
         ($1 AND d.datlocprovider = 'c' AND d.datcollate NOT IN ('C', 'POSIX'))
      OR ($2 AND d.datlocprovider = 'i')))
  )
ORDER BY 1`

// collations handles a change of the C library or ICU between the images: the
// indexes that depend on a changed collation are rebuilt (or listed when the
// rebuild is off), and the recorded collation versions refreshed, so that no
// index is silently out of order and no "collation version mismatch" warning is
// left.
func (r *runner) collations(ctx context.Context) error {
	libcChanged := r.old.Glibc != "" && r.new.Glibc != "" && r.old.Glibc != r.new.Glibc
	icuChanged := r.old.ICU != r.new.ICU
	var changes []string
	if libcChanged {
		changes = append(changes, fmt.Sprintf("glibc %s → %s", r.old.Glibc, r.new.Glibc))
	}
	if icuChanged {
		changes = append(changes, fmt.Sprintf("ICU %s → %s", orNone(r.old.ICU), orNone(r.new.ICU)))
	}
	r.res.CollationChange = strings.Join(changes, "; ")
	dbs, err := r.databases(ctx)
	if err != nil {
		return err
	}
	for _, db := range dbs {
		conn, err := connect(ctx, r.work, upgradePort, db)
		if err != nil {
			return fmt.Errorf("connecting to %s: %w", db, err)
		}
		err = r.collationsIn(ctx, conn, db, libcChanged, icuChanged)
		conn.Close(ctx)
		if err != nil {
			return fmt.Errorf("database %s: %w", db, err)
		}
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func (r *runner) collationsIn(ctx context.Context, conn *pgx.Conn, db string, libcChanged, icuChanged bool) error {
	if libcChanged || icuChanged {
		rows, err := conn.Query(ctx, collationIndexes, libcChanged, icuChanged)
		if err != nil {
			return err
		}
		var indexes []string
		for rows.Next() {
			var name string
			if err := rows.Scan(&name); err != nil {
				rows.Close()
				return err
			}
			indexes = append(indexes, name)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, idx := range indexes {
			if !r.cfg.RebuildCollationIndexes {
				r.res.IndexesToRebuild = append(r.res.IndexesToRebuild, db+":"+idx)
				continue
			}
			if _, err := conn.Exec(ctx, "REINDEX INDEX "+idx); err != nil {
				return fmt.Errorf("REINDEX INDEX %s: %w", idx, err)
			}
			r.res.RebuiltIndexes++
		}
		if !r.cfg.RebuildCollationIndexes && len(indexes) > 0 {
			// The versions stay as recorded: PostgreSQL keeps warning about the
			// mismatch until the indexes are rebuilt and the version refreshed.
			return nil
		}
	}
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+postgres.QuoteIdentifier(db)+" REFRESH COLLATION VERSION"); err != nil {
		return err
	}
	rows, err := queryRows(ctx, conn, `SELECT quote_ident(n.nspname) || '.' || quote_ident(c.collname) FROM pg_collation c
JOIN pg_namespace n ON n.oid = c.collnamespace
WHERE c.collversion IS NOT NULL AND c.collversion IS DISTINCT FROM pg_collation_actual_version(c.oid)`)
	if err != nil {
		return err
	}
	for _, row := range rows {
		if _, err := conn.Exec(ctx, "ALTER COLLATION "+row[0]+" REFRESH VERSION"); err != nil {
			return err
		}
	}
	return nil
}

// extensions lists the extensions whose installed version is not the new
// installation's default: they need ALTER EXTENSION … UPDATE (not run
// automatically: an update may change behaviour the application relies on).
func (r *runner) extensions(ctx context.Context) error {
	dbs, err := r.databases(ctx)
	if err != nil {
		return err
	}
	for _, db := range dbs {
		rows, err := querySocket(ctx, r.work, upgradePort, db, `SELECT e.extname, e.extversion, a.default_version
FROM pg_extension e JOIN pg_available_extensions a ON a.name = e.extname
WHERE a.default_version IS DISTINCT FROM e.extversion ORDER BY 1`)
		if err != nil {
			return fmt.Errorf("database %s: %w", db, err)
		}
		for _, row := range rows {
			r.res.ExtensionsToUpdate = append(r.res.ExtensionsToUpdate, fmt.Sprintf("%s.%s %s → %s", db, row[0], row[1], row[2]))
		}
	}
	return nil
}
