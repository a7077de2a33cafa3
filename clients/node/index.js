'use strict';
// Foretell client for Node.js: stubs built at run time by @grpc/proto-loader from the repository's
// protos/ (the one source of truth, so there is no generated code to regenerate or to drift), plus a
// thin promise wrapper for the serving calls whose answers follow the proto3 JSON mapping (the same
// JSON as Python's json_format.MessageToDict and C++'s MessageToJsonString).

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

/** protos/ of this repository; FORETELL_PROTOS (or the protosDir option) points elsewhere. */
const DEFAULT_PROTOS = path.resolve(__dirname, '..', '..', 'protos');

const SERVICE_FILES = [
  'foretell/v1/dataset_service.proto',
  'foretell/v1/training_service.proto',
  'foretell/v1/recommendation_service.proto',
  'foretell/v1/forecast_query_service.proto',
  'google/longrunning/operations.proto',
];

function protosDir(options) {
  return (options && options.protosDir) || process.env.FORETELL_PROTOS || DEFAULT_PROTOS;
}

// google/api, google/rpc and google/longrunning come from protos/third_party; google/protobuf's
// well-known types come with protobufjs.
function includeDirs(dir) {
  return [dir, path.join(dir, 'third_party')];
}

const loaded = new Map();

/**
 * The grpc-js package object (`pkg.foretell.v1.RecommendationService`, ...), loaded once per folder.
 * Fields keep their proto names (snake_case) in requests and raw answers.
 */
function loadPackage(options) {
  const dir = protosDir(options);
  if (!loaded.has(dir)) {
    const definition = protoLoader.loadSync(SERVICE_FILES, {
      includeDirs: includeDirs(dir),
      keepCase: true,
      longs: String,
      enums: String,
      defaults: false,
      oneofs: false,
    });
    loaded.set(dir, grpc.loadPackageDefinition(definition));
  }
  return loaded.get(dir);
}

// ---- errors: google.rpc.Status with ErrorInfo / BadRequest details (AIP-193) ---------------------

const statusRoots = new Map();

function statusRoot(dir) {
  if (!statusRoots.has(dir)) {
    const root = new protobuf.Root(); // field names in camelCase (protobufjs' default), as proto3 JSON
    root.resolvePath = (origin, target) => {
      for (const base of includeDirs(dir)) {
        const candidate = path.join(base, target);
        if (fs.existsSync(candidate)) return candidate;
      }
      return protobuf.util.path.resolve(origin, target);
    };
    root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
    root.resolveAll();
    statusRoots.set(dir, root);
  }
  return statusRoots.get(dir);
}

/** A failed call: gRPC code and message, and the google.rpc.Status details as proto3 JSON objects. */
class ForetellError extends Error {
  constructor(code, message, details) {
    super(`${grpc.status[code] || code}: ${message}`);
    this.name = 'ForetellError';
    this.code = code;
    this.codeName = grpc.status[code] || String(code);
    this.statusMessage = message;
    this.details = details || [];
  }

  /** The ErrorInfo reason (e.g. "RESOURCE_NOT_FOUND"), or "" without one. */
  get reason() {
    const info = this.details.find((d) => d['@type'] === 'type.googleapis.com/google.rpc.ErrorInfo');
    return info ? info.reason : '';
  }

  /** BadRequest field violations as [{field, description}]. */
  get fieldViolations() {
    const bad = this.details.find((d) => d['@type'] === 'type.googleapis.com/google.rpc.BadRequest');
    return bad && bad.fieldViolations ? bad.fieldViolations : [];
  }

  toJSON() {
    return { code: this.codeName, message: this.statusMessage, details: this.details };
  }

  static fromServiceError(error, options) {
    const raw = error.metadata ? error.metadata.get('grpc-status-details-bin') : [];
    let details = [];
    if (raw.length > 0) details = decodeDetails(statusRoot(protosDir(options)), raw[0]);
    return new ForetellError(error.code, error.details || error.message, details);
  }
}

/** google.rpc.Status bytes to its details, each as proto3 JSON with its "@type". */
function decodeDetails(root, bytes) {
  const status = root.lookupType('google.rpc.Status').decode(bytes);
  return (status.details || []).map((any) => {
    const url = any.type_url || any.typeUrl || ''; // protobufjs' built-in Any keeps type_url
    let type = null;
    try {
      type = root.lookupType(url.slice(url.lastIndexOf('/') + 1));
    } catch (_) {
      // a detail type this client does not know: keep its name only
    }
    if (!(type instanceof protobuf.Type)) return { '@type': url };
    const object = type.toObject(type.decode(any.value), { longs: String, enums: String, json: true });
    return Object.assign({ '@type': url }, camelKeys(object));
  });
}

function camelKeys(value) {
  if (Array.isArray(value)) return value.map(camelKeys);
  if (value === null || typeof value !== 'object') return value;
  const out = {};
  for (const [key, inner] of Object.entries(value)) {
    out[key.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase())] = camelKeys(inner);
  }
  return out;
}

// ---- proto3 JSON mapping of the answers ------------------------------------------------------------

/** google.protobuf.Timestamp {seconds, nanos} as RFC 3339 with 0, 3, 6 or 9 fraction digits. */
function timestampToJson(ts) {
  const seconds = Number(ts.seconds || 0);
  const nanos = Number(ts.nanos || 0);
  const base = new Date(seconds * 1000).toISOString().slice(0, 19);
  if (nanos === 0) return `${base}Z`;
  let digits = String(nanos).padStart(9, '0');
  if (nanos % 1000000 === 0) digits = digits.slice(0, 3);
  else if (nanos % 1000 === 0) digits = digits.slice(0, 6);
  return `${base}.${digits}Z`;
}

/** A Date, an RFC 3339 string or epoch seconds as a google.protobuf.Timestamp. */
function toTimestamp(value) {
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value === 'object' && !(value instanceof Date) && 'seconds' in value) return value;
  const ms = value instanceof Date ? value.getTime() : typeof value === 'number' ? value * 1000 : Date.parse(value);
  if (Number.isNaN(ms)) throw new TypeError(`not a time: ${value}`);
  const seconds = Math.floor(ms / 1000);
  return { seconds: String(seconds), nanos: Math.round((ms - seconds * 1000) * 1e6) };
}

function structValueToJson(value) {
  if ('null_value' in value) return null;
  if ('number_value' in value) return value.number_value;
  if ('string_value' in value) return value.string_value;
  if ('bool_value' in value) return value.bool_value;
  if ('struct_value' in value) return structToJson(value.struct_value);
  if ('list_value' in value) return (value.list_value.values || []).map(structValueToJson);
  return null;
}

function structToJson(struct) {
  const out = {};
  for (const [key, value] of Object.entries(struct.fields || {})) out[key] = structValueToJson(value);
  return out;
}

function predictedItemToJson(item) {
  const out = {};
  if (item.item_id) out.itemId = item.item_id;
  if (item.score !== undefined && item.score !== null) out.score = item.score;
  if (item.metadata) out.metadata = structToJson(item.metadata);
  if (item.reason) out.reason = item.reason;
  return out;
}

function pointsToJson(points) {
  return (points || []).map((p) => {
    const out = {};
    if (p.timestamp) out.timestamp = timestampToJson(p.timestamp);
    if (p.value) out.value = p.value;
    return out;
  });
}

function seriesToJson(series) {
  const out = {};
  if (series.item_id) out.itemId = series.item_id;
  if (series.dimensions && Object.keys(series.dimensions).length) out.dimensions = series.dimensions;
  if (series.quantiles && series.quantiles.length) {
    out.quantiles = series.quantiles.map((q) => {
      const quantile = {};
      if (q.quantile) quantile.quantile = q.quantile;
      if (q.points && q.points.length) quantile.points = pointsToJson(q.points);
      return quantile;
    });
  }
  if (series.mean && series.mean.length) out.mean = pointsToJson(series.mean);
  return out;
}

function itemsResponseToJson(field, jsonField) {
  return (response) => {
    const out = {};
    if (response[field] && response[field].length) out[jsonField] = response[field].map(predictedItemToJson);
    if (response.recommendation_id) out.recommendationId = response.recommendation_id;
    return out;
  };
}

function forecastResponseToJson(response) {
  const out = {};
  if (response.series && response.series.length) out.series = response.series.map(seriesToJson);
  if (response.next_page_token) out.nextPageToken = response.next_page_token;
  return out;
}

// ---- the client ------------------------------------------------------------------------------------

/**
 * Connects to a Foretell server (all-in-one `foretell serve`, or one service's address).
 *
 * Raw grpc-js stubs: `datasets`, `training`, `recommendations`, `forecastQuery`, `operations`
 * (callback style, snake_case fields). The promise methods below add a deadline and return proto3 JSON.
 */
class Client {
  constructor(target, options) {
    const opts = options || {};
    this.target = target;
    this.timeoutMs = opts.timeoutMs || 30000;
    this.options = opts;
    const pkg = loadPackage(opts);
    const v1 = pkg.foretell.v1;
    const credentials = opts.credentials || grpc.credentials.createInsecure();
    const channelOptions = opts.channelOptions || {};
    this.recommendations = new v1.RecommendationService(target, credentials, channelOptions);
    const channelOverride = { channelOverride: this.recommendations.getChannel() };
    this.datasets = new v1.DatasetService(target, credentials, channelOverride);
    this.training = new v1.TrainingService(target, credentials, channelOverride);
    this.forecastQuery = new v1.ForecastQueryService(target, credentials, channelOverride);
    this.operations = new pkg.google.longrunning.Operations(target, credentials, channelOverride);
  }

  close() {
    this.recommendations.close();
  }

  /** Calls any unary method of a raw stub as a promise, with the client's deadline; rejects with ForetellError. */
  call(stub, method, request, timeoutMs) {
    const deadline = new Date(Date.now() + (timeoutMs || this.timeoutMs));
    return new Promise((resolve, reject) => {
      stub[method](request, { deadline }, (error, response) => {
        if (error) reject(ForetellError.fromServiceError(error, this.options));
        else resolve(response);
      });
    });
  }

  /**
   * Items for a user (or related to itemId): {itemList: [{itemId, score, reason, metadata}], recommendationId}.
   */
  async getRecommendations(request) {
    const response = await this.call(this.recommendations, 'GetRecommendations', {
      campaign: request.campaign,
      user_id: request.userId || '',
      item_id: request.itemId || '',
      num_results: request.numResults || 0,
      filter: request.filter || '',
      filter_values: request.filterValues || {},
      context: request.context || {},
      metadata_columns: request.metadataColumns || [],
      include_interacted: Boolean(request.includeInteracted),
      session_id: request.sessionId || '',
    }, request.timeoutMs);
    return itemsResponseToJson('item_list', 'itemList')(response);
  }

  /** inputList re-ordered for userId, unknown items last: {personalizedRanking: [...], recommendationId}. */
  async getPersonalizedRanking(request) {
    const response = await this.call(this.recommendations, 'GetPersonalizedRanking', {
      campaign: request.campaign,
      user_id: request.userId,
      input_list: request.inputList || [],
      filter: request.filter || '',
      filter_values: request.filterValues || {},
      context: request.context || {},
      metadata_columns: request.metadataColumns || [],
      session_id: request.sessionId || '',
    }, request.timeoutMs);
    return itemsResponseToJson('personalized_ranking', 'personalizedRanking')(response);
  }

  /** Items similar to itemId: {itemList: [...]}. */
  async getSimilarItems(request) {
    const response = await this.call(this.recommendations, 'GetSimilarItems', {
      campaign: request.campaign,
      item_id: request.itemId,
      num_results: request.numResults || 0,
      filter: request.filter || '',
      filter_values: request.filterValues || {},
    }, request.timeoutMs);
    return itemsResponseToJson('item_list', 'itemList')(response);
  }

  /**
   * One page of a forecast: {series: [{itemId, dimensions, quantiles: [{quantile, points}], mean}], nextPageToken}.
   * startTime/endTime: Date, RFC 3339 string or epoch seconds; quantiles empty means all.
   */
  async queryForecast(request) {
    const response = await this.call(this.forecastQuery, 'QueryForecast', {
      forecast: request.forecast,
      item_id: request.itemId || '',
      dimensions: request.dimensions || {},
      start_time: toTimestamp(request.startTime),
      end_time: toTimestamp(request.endTime),
      quantiles: request.quantiles || [],
      page_size: request.pageSize || 0,
      page_token: request.pageToken || '',
    }, request.timeoutMs);
    return forecastResponseToJson(response);
  }
}

module.exports = {
  Client,
  ForetellError,
  loadPackage,
  timestampToJson,
  toTimestamp,
  grpc,
  DEFAULT_PROTOS,
};
