/** Child process of bench/convert.ts: one conversion, then its figures as one JSON line. */
import { convertWeights } from '../plugin/convert/index.js';

const [model, input, output, reversed, config] = process.argv.slice(2) as [string, string, string, string, string | undefined];
const t0 = process.hrtime.bigint();
const res = await convertWeights({
  model,
  inputPath: input,
  outputPath: output,
  reversed: reversed === 'reversed',
  ...(config !== undefined ? { options: { configPath: config } } : {}),
});
const secs = Number(process.hrtime.bigint() - t0) / 1e9;
process.stdout.write(`${JSON.stringify({ secs, bytes: res.bytesOut, files: res.files.length, maxRssKiB: process.resourceUsage().maxRSS, userSecs: process.resourceUsage().userCPUTime / 1e6, sysSecs: process.resourceUsage().systemCPUTime / 1e6 })}\n`);
