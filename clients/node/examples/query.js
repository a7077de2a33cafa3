#!/usr/bin/env node
'use strict';
// Calls GetRecommendations, GetPersonalizedRanking and QueryForecast and prints one JSON object:
//   {"recommendations": {...}, "ranking": {...}, "forecast": {...}}
// (proto3 JSON of each answer). A failed call prints {"error": {code, message, details}} on stderr, exit 1.
//
//   node examples/query.js --target 127.0.0.1:50051 --campaign campaigns/shop --user u42 \
//       [--num-results 10] [--rank i1,i7,i9] --forecast forecasts/next [--item sku42] [--quantile 0.5]...
//
// Every flag also reads an environment variable: FORETELL_TARGET, FORETELL_CAMPAIGN, FORETELL_USER,
// FORETELL_FORECAST, FORETELL_ITEM. Without --rank the recommended items are ranked, in reverse order.
// Without --campaign the recommendation calls are skipped, without --forecast the forecast query.

const { Client, ForetellError } = require('..');

const USAGE = 'usage: query.js --target HOST:PORT [--campaign NAME --user ID [--num-results N] [--rank A,B,...]]'
  + ' [--forecast NAME [--item ID] [--quantile Q]...] [--timeout-ms MS]';

function parse(argv) {
  const env = process.env;
  const args = {
    target: env.FORETELL_TARGET || '127.0.0.1:50051',
    campaign: env.FORETELL_CAMPAIGN || '',
    user: env.FORETELL_USER || '',
    forecast: env.FORETELL_FORECAST || '',
    item: env.FORETELL_ITEM || '',
    numResults: 0,
    rank: null,
    quantiles: [],
    timeoutMs: 10000,
  };
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    if (flag === '--help' || flag === '-h') {
      console.log(USAGE);
      process.exit(0);
    }
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`${flag} needs a value\n${USAGE}`);
    i += 1;
    switch (flag) {
      case '--target': args.target = value; break;
      case '--campaign': args.campaign = value; break;
      case '--user': args.user = value; break;
      case '--forecast': args.forecast = value; break;
      case '--item': args.item = value; break;
      case '--num-results': args.numResults = integer(flag, value); break;
      case '--rank': args.rank = value.split(',').filter(Boolean); break;
      case '--quantile': args.quantiles.push(number(flag, value)); break;
      case '--timeout-ms': args.timeoutMs = integer(flag, value); break;
      default: throw new Error(`unknown flag ${flag}\n${USAGE}`);
    }
  }
  if (!args.campaign && !args.forecast) throw new Error(`give --campaign, --forecast or both\n${USAGE}`);
  if (args.campaign && !args.user) throw new Error(`--campaign needs --user\n${USAGE}`);
  return args;
}

function integer(flag, value) {
  if (!/^\d+$/.test(value)) throw new Error(`${flag}: ${value} is not a whole number`);
  return Number(value);
}

function number(flag, value) {
  const parsed = Number(value);
  if (value.trim() === '' || Number.isNaN(parsed)) throw new Error(`${flag}: ${value} is not a number`);
  return parsed;
}

async function main() {
  let args;
  try {
    args = parse(process.argv.slice(2));
  } catch (error) {
    console.error(error.message);
    return 2;
  }
  const client = new Client(args.target, { timeoutMs: args.timeoutMs });
  const out = {};
  try {
    if (args.campaign) {
      out.recommendations = await client.getRecommendations({
        campaign: args.campaign, userId: args.user, numResults: args.numResults,
      });
      const inputList = args.rank || (out.recommendations.itemList || []).map((i) => i.itemId).reverse();
      out.ranking = await client.getPersonalizedRanking({
        campaign: args.campaign, userId: args.user, inputList,
      });
    }
    if (args.forecast) {
      out.forecast = await client.queryForecast({
        forecast: args.forecast, itemId: args.item, quantiles: args.quantiles,
      });
    }
  } catch (error) {
    if (!(error instanceof ForetellError)) throw error;
    console.error(JSON.stringify({ error }));
    return 1;
  } finally {
    client.close();
  }
  console.log(JSON.stringify(out, null, 2));
  return 0;
}

main().then((code) => { process.exitCode = code; });
