/**
 * Is a path on a network file system? Other nodes' writes to such a disk raise no local file
 * events, so waits there must poll. Decided from /proc/mounts: the file-system type of the
 * longest mount point that contains the path. `SHARED_PATHS` (comma-separated prefixes, as
 * mindformers reads it) marks further paths as shared.
 */
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { dirname, join, resolve, sep } from 'node:path';

/** File-system types that are shared between machines. */
export const NETWORK_FS_TYPES: ReadonlySet<string> = new Set([
  'nfs', 'nfs4', 'cifs', 'smb3', 'smbfs', 'lustre', 'gpfs', 'ceph', 'fuse.ceph', 'fuse.cephfs',
  'fuse.sshfs', 'sshfs', 'beegfs', 'glusterfs', 'fuse.glusterfs', 'dpc', 'orangefs', 'pvfs2',
  'panfs', 'afs', 'ocfs2', 'gfs2', 'fuse.juicefs', 'juicefs', 'fuse.s3fs', 'fuse.gcsfuse',
  'fuse.rclone', 'fuse.weka', 'wekafs', 'fuse.obsfs', 'virtiofs', '9p',
]);

export interface MountInfo {
  /** Mount point that contains the path (longest prefix). */
  readonly mountPoint: string;
  /** File-system type from /proc/mounts. */
  readonly fsType: string;
}

export interface SharedDiskInfo extends Partial<MountInfo> {
  /** The path as resolved (nearest existing ancestor, symlinks resolved). */
  readonly path: string;
  /** True when the path is on a network file system or under a SHARED_PATHS prefix. */
  readonly network: boolean;
  /** Why: 'fs-type', 'SHARED_PATHS', 'local' or 'unknown' (no /proc/mounts). */
  readonly reason: 'fs-type' | 'SHARED_PATHS' | 'local' | 'unknown';
}

/** Decode the octal escapes /proc/mounts uses for spaces, tabs, newlines and backslashes. */
function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Parse /proc/mounts text into (mount point, fs type) pairs. */
export function parseMounts(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length < 3) continue;
    out.push({ mountPoint: unescapeMount(f[1] as string), fsType: f[2] as string });
  }
  return out;
}

function isInside(path: string, prefix: string): boolean {
  if (prefix === sep) return true;
  const p = prefix.endsWith(sep) ? prefix.slice(0, -1) : prefix;
  return path === p || path.startsWith(p + sep);
}

/** The mount that holds `path` (already absolute and resolved), from a list of mounts. */
export function mountFor(path: string, mounts: readonly MountInfo[]): MountInfo | undefined {
  let best: MountInfo | undefined;
  for (const m of mounts) {
    if (!isInside(path, m.mountPoint)) continue;
    // later entries shadow earlier ones on the same mount point
    if (best === undefined || m.mountPoint.length >= best.mountPoint.length) best = m;
  }
  return best;
}

/** `path` made absolute, with the symlinks of its nearest existing ancestor resolved. */
function resolveExisting(path: string): string {
  const abs = resolve(path);
  let p = abs;
  for (;;) {
    if (existsSync(p)) {
      let real = p;
      try {
        real = realpathSync(p);
      } catch {
        real = p;
      }
      const tail = abs.slice(p.length);
      return tail === '' ? real : join(real, tail);
    }
    const up = dirname(p);
    if (up === p) return abs;
    p = up;
  }
}

/**
 * Whether `path` lies on a disk other machines share. `env` supplies SHARED_PATHS;
 * `mountsText` replaces /proc/mounts (for tests).
 */
export function detectSharedDisk(
  path: string,
  env: NodeJS.ProcessEnv = process.env,
  mountsText?: string,
): SharedDiskInfo {
  const real = resolveExisting(path);
  const shared = (env['SHARED_PATHS'] ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  for (const s of shared) {
    if (isInside(real, resolveExisting(s)) || isInside(resolve(path), resolve(s))) {
      return { path: real, network: true, reason: 'SHARED_PATHS' };
    }
  }
  let text = mountsText;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/mounts', 'utf8');
    } catch {
      return { path: real, network: false, reason: 'unknown' };
    }
  }
  const m = mountFor(real, parseMounts(text));
  if (m === undefined) return { path: real, network: false, reason: 'unknown' };
  const network = NETWORK_FS_TYPES.has(m.fsType);
  return { path: real, network, reason: network ? 'fs-type' : 'local', mountPoint: m.mountPoint, fsType: m.fsType };
}
