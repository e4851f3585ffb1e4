import { describe, expect, it } from 'vitest';
import { describeError, exitCodeOf, fromSystemError, InputError } from '../plugin/errors.js';
import { formatDuration, parseDuration, parseSize } from '../plugin/units.js';

describe('durations: a bare number is seconds everywhere', () => {
  it.each([
    ['2', 2000], [2, 2000], ['0.5', 500], [0.25, 250], ['500ms', 500], ['2s', 2000], ['10m', 600_000],
    ['1h', 3_600_000], ['1h30m', 5_400_000], ['1.5h', 5_400_000], [' 3 s ', 3000], ['1d', 86_400_000],
  ])('%s -> %d ms', (text, ms) => {
    expect(parseDuration(text, '--x')).toBe(ms);
  });
  it.each(['', 'abc', '5 years', '-1', '1h junk', '0'])('refuses %j, naming the flag', (text) => {
    expect(() => parseDuration(text, '--poll-interval')).toThrow(InputError);
    expect(() => parseDuration(text, '--poll-interval')).toThrow(/--poll-interval/);
  });
  it('zero only when allowed', () => {
    expect(parseDuration('0', 'k', { allowZero: true })).toBe(0);
  });
  it('formats for people', () => {
    expect(formatDuration(850)).toBe('850 ms');
    expect(formatDuration(12_500)).toBe('13 s');
    expect(formatDuration(200_000)).toBe('3 min 20 s');
  });
});

describe('sizes: one convention for every flag', () => {
  it.each([
    ['1048576', 1048576], [4096, 4096], ['512M', 512 * 2 ** 20], ['512MiB', 512 * 2 ** 20], ['512MB', 512e6],
    ['2G', 2 ** 31], ['5GB', 5e9], ['5gb', 5e9], ['1.5GiB', 1.5 * 2 ** 30], ['64KiB', 65536], ['64k', 65536],
    ['100B', 100], ['1T', 2 ** 40],
  ])('%s -> %d bytes', (text, bytes) => {
    expect(parseSize(text, '--memory')).toBe(bytes);
  });
  it.each(['-5', '0', 'lots', '5 parsecs', '1e3'])('refuses %j, naming the flag', (text) => {
    expect(() => parseSize(text, '--memory')).toThrow(/--memory/);
  });
});

describe('system errors in plain words', () => {
  const enospc = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', syscall: 'write' });
  it('one mention of the code, the path and what to do; exit 1 for a full disk', () => {
    const text = describeError(fromSystemError(enospc, '/out/rank_0/x.ckpt', 'writing'));
    expect(text).toBe('/out/rank_0/x.ckpt: writing: no space left on the device (ENOSPC); free space or choose another output folder');
    expect(exitCodeOf(enospc)).toBe(1);
  });
  it('permission problems are the user\'s to fix: exit 2', () => {
    const eacces = Object.assign(new Error("EACCES: permission denied, open '/ro/x'"), { code: 'EACCES', path: '/ro/x' });
    expect(exitCodeOf(eacces)).toBe(2);
    expect(describeError(eacces)).toBe('/ro/x: permission denied (EACCES); check the permissions of the path and its parent folders');
  });
});
